with

customer_months as (

    select * from {{ ref('int_customer_orders_monthly') }}

),

dates as (

    select * from {{ ref('dim_date') }}

),

months as (

    select distinct month_start_date as order_month
    from dates

),

last_month as (

    select max(order_month) as last_order_month
    from months

),

first_purchases as (

    -- A customer's cohort: the month of their first purchase order.
    select
        customer_id,
        min(order_month) as cohort_month
    from customer_months
    where order_count > 0
    group by customer_id

),

cohort_sizes as (

    select
        cohort_month,
        count(*) as cohort_customers
    from first_purchases
    group by cohort_month

),

cohort_activity as (

    select
        first_purchases.cohort_month,
        customer_months.order_month,
        sum(case when customer_months.order_count > 0 then 1 else 0 end) as active_customers,
        sum(customer_months.order_count) as order_count,
        sum(customer_months.net_revenue) as net_revenue
    from customer_months
    inner join first_purchases
        on customer_months.customer_id = first_purchases.customer_id
    group by first_purchases.cohort_month, customer_months.order_month

),

grid as (

    -- Every cohort in every month from its first to the last month of the data.
    select
        cohort_sizes.cohort_month,
        months.order_month,
        cohort_sizes.cohort_customers
    from cohort_sizes
    inner join months
        on cohort_sizes.cohort_month <= months.order_month

),

final as (

    select
        grid.cohort_month,
        grid.order_month,
        {{ months_between('grid.cohort_month', 'grid.order_month') }} as months_since_first_order,
        cast(grid.cohort_customers as {{ dbt.type_bigint() }}) as cohort_customers,
        cast(coalesce(cohort_activity.active_customers, 0) as {{ dbt.type_bigint() }}) as active_customers,
        cast(
            coalesce(cohort_activity.active_customers, 0) as {{ type_double() }}
        ) / grid.cohort_customers as retention_rate,
        cast(coalesce(cohort_activity.order_count, 0) as {{ dbt.type_bigint() }}) as order_count,
        cast(coalesce(cohort_activity.net_revenue, 0) as {{ type_double() }}) as net_revenue,
        cast(
            sum(coalesce(cohort_activity.net_revenue, 0)) over (
                partition by grid.cohort_month
                order by grid.order_month
                rows between unbounded preceding and current row
            ) as {{ type_double() }}
        ) / grid.cohort_customers as cumulative_net_revenue_per_customer,
        grid.order_month < last_month.last_order_month as is_complete_month
    from grid
    cross join last_month
    left join cohort_activity
        on
            grid.cohort_month = cohort_activity.cohort_month
            and grid.order_month = cohort_activity.order_month

)

select * from final
