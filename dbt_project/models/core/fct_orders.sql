{#
    Incremental by order_date (every line of an order has the order's date): a run rebuilds
    the days of fct_order_lines written since this model's own last run.
#}
{{
    config(
        materialized='incremental',
        unique_key='order_date',
        incremental_strategy=('insert_overwrite' if target.type == 'bigquery' else 'delete+insert'),
        partition_by=({'field': 'order_date', 'data_type': 'date'} if target.type == 'bigquery' else none),
        indexes=([
            {'columns': ['order_date']},
            {'columns': ['transformed_at']},
        ] if target.type == 'postgres' else []),
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

orders as (

    select
        -- ids
        order_id,
        min(customer_id) as customer_id,

        -- dimension keys
        min(customer_sk) as customer_sk,

        -- attributes
        min(currency) as currency,
        min(channel) as channel,

        -- measures
        count(*) as line_count,
        sum(case when is_product_line and not is_return then quantity else 0 end) as units_sold,
        sum(case when is_product_line and is_return then -quantity else 0 end) as units_returned,
        sum(gross_amount) as gross_amount,
        sum(discount_amount) as discount_amount,
        sum(case when is_product_line and not is_return then net_amount else 0 end) as purchase_net_amount,
        sum(case when is_product_line then 0 else net_amount end) as shipping_amount,
        sum(net_amount) as net_amount,

        sum(case when is_product_line and not is_return then 1 else 0 end) as sale_line_count,
        sum(case when is_product_line and is_return then 1 else 0 end) as return_line_count,

        -- dates and timestamps
        min(order_date) as order_date,
        min(ordered_at) as ordered_at
    from order_lines
    group by order_id

),

final as (

    select
        order_id,
        customer_id,
        customer_sk,
        currency,
        channel,
        cast(line_count as {{ dbt.type_bigint() }}) as line_count,
        cast(units_sold as {{ dbt.type_bigint() }}) as units_sold,
        cast(units_returned as {{ dbt.type_bigint() }}) as units_returned,
        cast(gross_amount as {{ type_double() }}) as gross_amount,
        cast(discount_amount as {{ type_double() }}) as discount_amount,
        cast(purchase_net_amount as {{ type_double() }}) as purchase_net_amount,
        cast(shipping_amount as {{ type_double() }}) as shipping_amount,
        cast(net_amount as {{ type_double() }}) as net_amount,
        return_line_count > 0 and sale_line_count = 0 as is_return_order,
        customer_id is null as is_guest_order,
        order_date,
        ordered_at,
        {{ run_started_at_literal() }} as transformed_at
    from orders

)

select * from final
