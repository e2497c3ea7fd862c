{#
    SCD type 2 product dimension (price history): one row per version of each product, from
    the snapshot snap_shop__products, plus the special members.
#}

with

product_versions as (

    select * from {{ ref('snap_shop__products') }}

),

numbered as (

    select
        *,
        row_number() over (partition by product_id order by dbt_valid_from) as version_number
    from product_versions

),

product_members as (

    select
        {{ integer_surrogate_key(['product_id', epoch_microseconds('dbt_valid_from')]) }} as product_sk,
        product_id,
        product_name,
        category,
        color,
        size,
        currency,
        list_price,
        weight_g,
        cast(version_number as {{ dbt.type_bigint() }}) as version_number,
        is_active,
        dbt_valid_to is null as is_current,
        created_at,
        updated_at,
        -- The first version known also stands for the time from creation until it was first
        -- extracted: what the product looked like before is not known.
        case
            when version_number = 1 and created_at < dbt_valid_from then created_at
            else dbt_valid_from
        end as valid_from,
        dbt_valid_to as valid_to,
        extracted_at
    from numbered

),

special_members as (

    -- -1: a product_id the product extract does not (yet) contain
    select
        cast(-1 as {{ dbt.type_bigint() }}) as product_sk,
        'unknown' as product_id,
        'unknown' as product_name,
        'unknown' as category,
        cast(null as {{ dbt.type_string() }}) as color,
        cast(null as {{ dbt.type_string() }}) as size,
        cast(null as {{ dbt.type_string() }}) as currency,
        cast(null as {{ type_double() }}) as list_price,
        cast(null as {{ type_double() }}) as weight_g,
        cast(1 as {{ dbt.type_bigint() }}) as version_number,
        false as is_active,
        true as is_current,
        cast(null as {{ type_timestamptz() }}) as created_at,
        cast(null as {{ type_timestamptz() }}) as updated_at,
        cast(null as {{ type_timestamptz() }}) as valid_from,
        cast(null as {{ type_timestamptz() }}) as valid_to,
        cast(null as {{ type_timestamptz() }}) as extracted_at

    union all

    -- -2: the shipping-fee line of an order (product_id 'SHIPPING'), not a product
    select
        cast(-2 as {{ dbt.type_bigint() }}) as product_sk,
        'SHIPPING' as product_id,
        'Shipping fee' as product_name,
        'shipping' as category,
        cast(null as {{ dbt.type_string() }}) as color,
        cast(null as {{ dbt.type_string() }}) as size,
        cast(null as {{ dbt.type_string() }}) as currency,
        cast(null as {{ type_double() }}) as list_price,
        cast(null as {{ type_double() }}) as weight_g,
        cast(1 as {{ dbt.type_bigint() }}) as version_number,
        true as is_active,
        true as is_current,
        cast(null as {{ type_timestamptz() }}) as created_at,
        cast(null as {{ type_timestamptz() }}) as updated_at,
        cast(null as {{ type_timestamptz() }}) as valid_from,
        cast(null as {{ type_timestamptz() }}) as valid_to,
        cast(null as {{ type_timestamptz() }}) as extracted_at

),

final as (

    select * from product_members
    union all
    select * from special_members

)

select * from final
