{# Incremental by order_date: rebuilds the days of fct_order_lines written since its last run. #}
{{
    config(
        materialized='incremental',
        unique_key='order_date',
        incremental_strategy=('insert_overwrite' if target.type == 'bigquery' else 'delete+insert'),
        partition_by=({'field': 'order_date', 'data_type': 'date'} if target.type == 'bigquery' else none),
        indexes=([{'columns': ['order_date']}] if target.type == 'postgres' else []),
        on_schema_change='append_new_columns',
    )
}}

{%- set rebuild_days = 'true' -%}
{%- if is_incremental() -%}
    {%- set rebuild_days = days_transformed_since_last_run(ref('fct_order_lines'), 'order_date', 'order_date') -%}
{%- endif %}

with

order_lines as (

    select * from {{ ref('fct_order_lines') }}
    where {{ rebuild_days }}

),

products as (

    select * from {{ ref('dim_products') }}

),

lines as (

    select
        order_lines.order_date,
        products.category,
        order_lines.channel,
        order_lines.order_id,
        order_lines.quantity,
        order_lines.gross_amount,
        order_lines.discount_amount,
        order_lines.net_amount,
        order_lines.is_return
    from order_lines
    inner join products
        on order_lines.product_sk = products.product_sk

),

final as (

    select
        order_date,
        category,
        channel,
        cast(
            count(distinct case when not is_return then order_id end) as {{ dbt.type_bigint() }}
        ) as order_count,
        cast(sum(case when is_return then 0 else quantity end) as {{ dbt.type_bigint() }}) as units_sold,
        cast(sum(case when is_return then -quantity else 0 end) as {{ dbt.type_bigint() }}) as units_returned,
        cast(sum(case when is_return then 0 else gross_amount end) as {{ type_double() }}) as gross_revenue,
        cast(sum(case when is_return then 0 else discount_amount end) as {{ type_double() }}) as discount_amount,
        cast(sum(case when is_return then -net_amount else 0 end) as {{ type_double() }}) as returned_amount,
        cast(sum(net_amount) as {{ type_double() }}) as net_revenue,
        {{ run_started_at_literal() }} as transformed_at
    from lines
    group by order_date, category, channel

)

select * from final
