{#
    Incremental by order_date (delete+insert of whole days): a run rebuilds the days of
    fct_order_lines written since its last run. The product categories the ML features
    count, kept per day so the feature models never re-read the order-line fact.
#}
{{
    config(
        materialized='incremental',
        unique_key='order_date',
        incremental_strategy=('insert_overwrite' if target.type == 'bigquery' else 'delete+insert'),
        partition_by=({'field': 'order_date', 'data_type': 'date'} if target.type == 'bigquery' else none),
        indexes=([{'columns': ['order_date']}, {'columns': ['transformed_at']}] if target.type == 'postgres' else []),
        on_schema_change='append_new_columns',
    )
}}

{%- set rebuild_days = 'true' -%}
{%- if is_incremental() -%}
    {%- set rebuild_days = days_transformed_since_last_run(ref('fct_order_lines'), 'order_date', 'order_date') -%}
{%- endif %}

with

order_lines as (

    select
        customer_id,
        product_sk,
        order_date
    from {{ ref('fct_order_lines') }}
    where
        {{ rebuild_days }}
        and customer_sk > 0
        and is_product_line
        and not is_return

),

products as (

    select
        product_sk,
        category
    from {{ ref('dim_products') }}

),

final as (

    select distinct
        order_lines.customer_id,
        products.category,
        order_lines.order_date,
        {{ run_started_at_literal() }} as transformed_at
    from order_lines
    inner join products
        on order_lines.product_sk = products.product_sk

)

select * from final
