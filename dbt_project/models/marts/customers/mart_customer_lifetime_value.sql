{%- set run_rate_months = 12 -%}

with

customer_months as (

    select * from {{ ref('int_customer_orders_monthly') }}

),

customers as (

    select * from {{ ref('dim_customers') }}
    where
        customer_sk > 0
        and is_current

),

dates as (

    select * from {{ ref('dim_date') }}

),

data_end as (

    select
        max(date_day) as last_date,
        max(month_start_date) as last_month
    from dates

),

lifetime as (

    select
        customer_id,
        min(case when order_count > 0 then order_month end) as cohort_month,
        sum(order_count) as order_count,
        sum(return_order_count) as return_order_count,
        sum(units_sold) as units_sold,
        sum(units_returned) as units_returned,
        sum(net_revenue) as net_revenue,
        sum(case when order_count > 0 then 1 else 0 end) as active_months,
        min(first_order_date) as first_order_date,
        max(last_order_date) as last_order_date
    from customer_months
    group by customer_id
    having sum(order_count) > 0

),

recent as (

    -- Net revenue in the last {{ run_rate_months }} months of the data (current month included).
    select
        customer_months.customer_id,
        sum(customer_months.net_revenue) as net_revenue
    from customer_months
    cross join data_end
    where customer_months.order_month > {{ dbt.dateadd('month', -run_rate_months, 'data_end.last_month') }}
    group by customer_months.customer_id

),

spans as (

    select
        lifetime.*,
        customers.customer_sk,
        customers.country,
        customers.loyalty_tier,
        customers.signup_channel,
        coalesce(recent.net_revenue, 0) as recent_net_revenue,
        {{ months_between('lifetime.cohort_month', 'data_end.last_month') }} + 1 as lifetime_months,
        {{ days_between('lifetime.last_order_date', 'data_end.last_date') }} as days_since_last_order
    from lifetime
    cross join data_end
    inner join customers
        on lifetime.customer_id = customers.customer_id
    left join recent
        on lifetime.customer_id = recent.customer_id

),

final as (

    select
        customer_id,
        customer_sk,
        country,
        loyalty_tier,
        signup_channel,
        cast(order_count as {{ dbt.type_bigint() }}) as order_count,
        cast(return_order_count as {{ dbt.type_bigint() }}) as return_order_count,
        cast(units_sold as {{ dbt.type_bigint() }}) as units_sold,
        cast(units_returned as {{ dbt.type_bigint() }}) as units_returned,
        cast(active_months as {{ dbt.type_bigint() }}) as active_months,
        cast(lifetime_months as {{ dbt.type_bigint() }}) as lifetime_months,
        days_since_last_order,
        cast(net_revenue as {{ type_double() }}) as net_revenue,
        cast(net_revenue / order_count as {{ type_double() }}) as avg_order_net_revenue,
        cast(net_revenue / lifetime_months as {{ type_double() }}) as avg_monthly_net_revenue,
        cast(
            recent_net_revenue
            / (case when lifetime_months < {{ run_rate_months }} then lifetime_months else {{ run_rate_months }} end)
            * {{ run_rate_months }} as {{ type_double() }}
        ) as projected_net_revenue_12m,
        cohort_month,
        first_order_date,
        last_order_date
    from spans

)

select * from final
