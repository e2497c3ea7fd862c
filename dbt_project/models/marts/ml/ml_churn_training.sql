{%- set horizon_days = var('churn_horizon_days') | int -%}

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

dates as (

    select * from {{ ref('dim_date') }}

),

customer_lines as (

    {{ customer_product_lines('order_lines', 'products') }}

),

first_orders as (

    select
        customer_id,
        min(order_date) as first_order_date
    from customer_lines
    where not is_return
    group by customer_id

),

data_range as (

    select
        min(order_date) as first_order_date,
        max(order_date) as last_order_date
    from order_lines

),

cutoffs as (

    -- Every Monday with enough history before it and a fully observed label window after it.
    select dates.date_day as cutoff_date
    from dates
    cross join data_range
    where
        dates.day_of_week = 1
        and dates.date_day
        >= {{ add_days('data_range.first_order_date', var('churn_min_history_days') | int) }}
        and dates.date_day <= {{ add_days('data_range.last_order_date', -horizon_days) }}

),

spine as (

    -- Customers who signed up and ordered before the cutoff.
    select
        customers.customer_id,
        cutoffs.cutoff_date as as_of_date
    from customers
    inner join first_orders
        on customers.customer_id = first_orders.customer_id
    inner join cutoffs
        on
            customers.signup_date < cutoffs.cutoff_date
            and first_orders.first_order_date < cutoffs.cutoff_date

),

features as (

    {{ customer_features('spine', 'customer_lines', 'customers') }}

),

labels as (

    -- Churned: no order in [cutoff_date, cutoff_date + horizon).
    select
        spine.customer_id,
        spine.as_of_date,
        count(customer_lines.order_id) = 0 as is_churned
    from spine
    left join customer_lines
        on
            spine.customer_id = customer_lines.customer_id
            and not customer_lines.is_return
            and spine.as_of_date <= customer_lines.order_date
            and customer_lines.order_date < {{ add_days('spine.as_of_date', horizon_days) }}
    group by spine.customer_id, spine.as_of_date

),

final as (

    select
        features.customer_id,
        features.as_of_date as cutoff_date,
        features.recency_days,
        features.frequency_90d,
        features.monetary_90d,
        features.frequency_365d,
        features.monetary_365d,
        features.avg_order_value_365d,
        features.return_rate_365d,
        features.tenure_days,
        features.distinct_categories_365d,
        features.country,
        features.loyalty_tier,
        features.signup_channel,
        labels.is_churned
    from features
    inner join labels
        on
            features.customer_id = labels.customer_id
            and features.as_of_date = labels.as_of_date

)

select * from final
