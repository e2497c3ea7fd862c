with

source as (

    select * from {{ source('shop', 'products') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by _id
            order by updated_at desc, _extracted_at desc, _batch_id desc
        ) as version_rank
    from source

),

latest as (

    select * from ranked
    where version_rank = 1

),

final as (

    select
        _id as product_id,
        name as product_name,
        category,
        {{ json_extract_text('_document', ['attributes', 'color']) }} as color,
        {{ json_extract_text('_document', ['attributes', 'size']) }} as size,
        currency,
        cast(price as {{ type_double() }}) as list_price,
        cast({{ json_extract_text('_document', ['attributes', 'weight_g']) }} as {{ type_double() }}) as weight_g,
        is_active,
        {{ naive_to_utc('created_at', 'UTC') }} as created_at,
        {{ naive_to_utc('updated_at', 'UTC') }} as updated_at,
        _batch_id as batch_id,
        _extracted_at as extracted_at
    from latest

)

select * from final
