with

source as (

    select * from {{ source('shop', 'order_lines') }}

),

renamed as (

    select
        order_id,
        cast(line_number as {{ dbt.type_bigint() }}) as line_number,
        customer_id,
        product_id,
        currency,
        channel,
        cast(quantity as {{ dbt.type_bigint() }}) as quantity,
        cast(unit_price as {{ type_double() }}) as unit_price,
        cast(coalesce(discount_amount, 0) as {{ type_double() }}) as discount_amount,
        -- the shop's calendar day: the date of the local wall-clock time
        cast(ordered_at as date) as order_date,
        {{ naive_to_utc('ordered_at') }} as ordered_at,
        {{ naive_to_utc('exported_at') }} as exported_at,
        _load_id as load_id,
        _extracted_at as extracted_at
    from source

),

ranked as (

    -- A line exported twice (an exact duplicate, or a re-export) keeps its latest copy.
    -- order_date is part of the key so that the incremental facts' filter on order_date
    -- reaches the raw table's scan; copies that disagree on the day both stay and fail the
    -- unique test on order_line_id.
    select
        *,
        row_number() over (
            partition by order_id, line_number, order_date
            order by exported_at desc, extracted_at desc, load_id desc
        ) as copy_rank
    from renamed

),

final as (

    select
        {{ text_surrogate_key(['order_id', 'line_number']) }} as order_line_id,
        order_id,
        line_number,
        customer_id,
        product_id,
        currency,
        channel,
        quantity,
        unit_price,
        discount_amount,
        quantity < 0 as is_return,
        product_id != 'SHIPPING' as is_product_line,
        order_date,
        ordered_at,
        exported_at,
        load_id,
        extracted_at
    from ranked
    where copy_rank = 1

)

select * from final
