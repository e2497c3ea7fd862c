{#
    Current state of each product. The SCD2 issue will read a snapshot of stg_shop__products
    here instead (price history); valid_from, valid_to and is_current already carry that
    shape.
#}

with

products as (

    select * from {{ ref('stg_shop__products') }}

),

product_members as (

    select
        {{ integer_surrogate_key(['product_id']) }} as product_sk,
        product_id,
        product_name,
        category,
        color,
        size,
        currency,
        list_price,
        weight_g,
        is_active,
        true as is_current,
        created_at,
        updated_at,
        updated_at as valid_from,
        cast(null as {{ type_timestamptz() }}) as valid_to
    from products

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
        false as is_active,
        true as is_current,
        cast(null as {{ type_timestamptz() }}) as created_at,
        cast(null as {{ type_timestamptz() }}) as updated_at,
        cast(null as {{ type_timestamptz() }}) as valid_from,
        cast(null as {{ type_timestamptz() }}) as valid_to

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
        true as is_active,
        true as is_current,
        cast(null as {{ type_timestamptz() }}) as created_at,
        cast(null as {{ type_timestamptz() }}) as updated_at,
        cast(null as {{ type_timestamptz() }}) as valid_from,
        cast(null as {{ type_timestamptz() }}) as valid_to

),

final as (

    select * from product_members
    union all
    select * from special_members

)

select * from final
