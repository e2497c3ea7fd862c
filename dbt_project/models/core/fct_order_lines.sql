{#
    Incremental by order_date: a run replaces whole order days. It rebuilds
      - the last `incremental_lookback_days` days before the latest loaded order_date,
      - every day that received lines extracted since the previous run (late files), and
      - every day that still has lines on the unknown customer/product member (-1), so
        late-arriving dimension rows get their keys.
    BigQuery has no delete+insert; insert_overwrite on the order_date partition is the same.
#}
{{
    config(
        materialized='incremental',
        unique_key='order_date',
        incremental_strategy=('insert_overwrite' if target.type == 'bigquery' else 'delete+insert'),
        partition_by=({'field': 'order_date', 'data_type': 'date'} if target.type == 'bigquery' else none),
        on_schema_change='append_new_columns',
    )
}}

with

order_lines as (

    select * from {{ ref('stg_shop__order_lines') }}

),

customers as (

    select * from {{ ref('dim_customers') }}

),

products as (

    select * from {{ ref('dim_products') }}

),

{% if is_incremental() %}

loaded as (

    select
        max(order_date) as last_order_date,
        max(extracted_at) as last_extracted_at
    from {{ this }}

),

days_to_rebuild as (

    select order_lines.order_date
    from order_lines
    cross join loaded
    where
        loaded.last_order_date is null
        or order_lines.extracted_at > loaded.last_extracted_at
        or order_lines.order_date
        >= {{ add_days('loaded.last_order_date', -(var('incremental_lookback_days') | int)) }}

    union all

    select order_date
    from {{ this }}
    where customer_sk = -1 or product_sk = -1

),

{% endif %}

new_lines as (

    select * from order_lines
    {% if is_incremental() %}
    where order_date in (select days_to_rebuild.order_date from days_to_rebuild)
    {% endif %}

),

final as (

    select
        -- ids
        new_lines.order_line_id,
        new_lines.order_id,
        new_lines.line_number,
        new_lines.customer_id,
        new_lines.product_id,

        -- dimension keys
        case
            when new_lines.customer_id is null then cast(-2 as {{ dbt.type_bigint() }})
            else coalesce(customers.customer_sk, -1)
        end as customer_sk,
        coalesce(products.product_sk, -1) as product_sk,

        -- attributes
        new_lines.currency,
        new_lines.channel,

        -- measures
        new_lines.quantity,
        new_lines.unit_price,
        new_lines.quantity * new_lines.unit_price as gross_amount,
        new_lines.discount_amount,
        new_lines.quantity * new_lines.unit_price - new_lines.discount_amount as net_amount,

        -- flags
        new_lines.is_return,
        new_lines.is_product_line,

        -- dates and timestamps
        new_lines.order_date,
        new_lines.ordered_at,
        new_lines.exported_at,
        new_lines.extracted_at
    from new_lines
    left join customers
        on new_lines.customer_id = customers.customer_id
    left join products
        on new_lines.product_id = products.product_id

)

select * from final
