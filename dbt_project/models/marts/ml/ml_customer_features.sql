with

order_lines as (

    select * from {{ ref('fct_order_lines') }}

),

products as (

    select * from {{ ref('dim_products') }}

),

customers as (

    select * from {{ ref('dim_customers') }}
    where customer_sk > 0

),

customer_lines as (

    {{ customer_product_lines('order_lines', 'products') }}

),

customers_with_orders as (

    select distinct customer_id
    from customer_lines
    where not is_return

),

data_range as (

    -- Features are as of the day after the latest order date: every loaded day counts.
    select {{ add_days('max(order_date)', 1) }} as as_of_date
    from order_lines

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

    {{ customer_features('spine', 'customer_lines', 'customers') }}

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
