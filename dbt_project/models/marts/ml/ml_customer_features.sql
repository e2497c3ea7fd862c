{{ config(pre_hook="{{ no_nested_loops() }}") }}

with

orders as (

    select * from {{ ref('fct_orders') }}

),

customer_versions as (

    select * from {{ ref('dim_customers') }}
    where customer_sk > 0

),

customer_categories as (

    select * from {{ ref('int_customer_categories_daily') }}

),

dates as (

    select * from {{ ref('dim_date') }}

),

customer_orders as (

    {{ customer_orders('orders') }}

),

customers_with_orders as (

    select distinct customer_id
    from customer_orders
    where is_purchase

),

data_range as (

    -- Features are as of the day after the latest order date: every loaded day counts.
    select {{ add_days('max(date_day)', 1) }} as as_of_date
    from dates

),

spine as (

    -- Customers with at least one order.
    select
        customers_with_orders.customer_id,
        data_range.as_of_date
    from customers_with_orders
    cross join data_range

),

features as (

    {{ customer_features('spine', 'customer_orders', 'customer_categories', 'customer_versions') }}

),

final as (

    select
        customer_id,
        as_of_date,
        recency_days,
        frequency_90d,
        monetary_90d,
        frequency_365d,
        monetary_365d,
        avg_order_value_365d,
        return_rate_365d,
        tenure_days,
        distinct_categories_365d,
        country,
        loyalty_tier,
        signup_channel
    from features

)

select * from final
