{#
    Incremental by order_month (delete+insert of whole months): a run rebuilds the months
    holding fct_orders rows written since its last run. The small table the customer marts
    (cohorts, lifetime value) aggregate, instead of the order fact.
#}
{{
    config(
        materialized='incremental',
        unique_key='order_month',
        incremental_strategy=('insert_overwrite' if target.type == 'bigquery' else 'delete+insert'),
        partition_by=({'field': 'order_month', 'data_type': 'date'} if target.type == 'bigquery' else none),
        indexes=([{'columns': ['order_month']}, {'columns': ['transformed_at']}] if target.type == 'postgres' else []),
        on_schema_change='append_new_columns',
    )
}}

{%- set rebuild_months = 'true' -%}
{%- if is_incremental() -%}
    {%- set rebuild_months = months_transformed_since_last_run(ref('fct_orders'), 'order_date', 'order_date') -%}
{%- endif %}

with

orders as (

    select * from {{ ref('fct_orders') }}
    where
        customer_sk > 0
        and ({{ rebuild_months }})

),

classified as (

    select
        customer_id,
        {{ month_start('order_date') }} as order_month,
        order_id,
        units_sold,
        units_returned,
        net_amount - shipping_amount as product_net_amount,
        units_sold > 0 as is_purchase,
        is_return_order,
        order_date
    from orders

),

final as (

    select
        customer_id,
        order_month,
        cast(sum(case when is_purchase then 1 else 0 end) as {{ dbt.type_bigint() }}) as order_count,
        cast(sum(case when is_return_order then 1 else 0 end) as {{ dbt.type_bigint() }}) as return_order_count,
        cast(sum(units_sold) as {{ dbt.type_bigint() }}) as units_sold,
        cast(sum(units_returned) as {{ dbt.type_bigint() }}) as units_returned,
        cast(sum(product_net_amount) as {{ type_double() }}) as net_revenue,
        min(case when is_purchase then order_date end) as first_order_date,
        max(case when is_purchase then order_date end) as last_order_date,
        {{ run_started_at_literal() }} as transformed_at
    from classified
    group by customer_id, order_month

)

select * from final
