with

order_lines as (

    select * from {{ ref('fct_order_lines') }}

),

products as (

    select * from {{ ref('dim_products') }}

),

dates as (

    select * from {{ ref('dim_date') }}

),

product_sales as (

    -- Units sold on known products; returns are left out (see the model description).
    select
        products.category,
        order_lines.order_date,
        order_lines.quantity,
        order_lines.net_amount
    from order_lines
    inner join products
        on order_lines.product_sk = products.product_sk
    where
        order_lines.is_product_line
        and not order_lines.is_return
        and order_lines.product_sk > 0

),

daily_sales as (

    select
        category,
        order_date,
        sum(quantity) as units,
        sum(net_amount) as revenue
    from product_sales
    group by category, order_date

),

categories as (

    select distinct category from product_sales

),

final as (

    -- Every category on every day of the data range; days without sales are 0.
    select
        categories.category,
        dates.date_day as order_date,
        cast(coalesce(daily_sales.units, 0) as {{ dbt.type_bigint() }}) as units,
        cast(coalesce(daily_sales.revenue, 0) as {{ type_double() }}) as revenue
    from categories
    cross join dates
    left join daily_sales
        on
            categories.category = daily_sales.category
            and dates.date_day = daily_sales.order_date

)

select * from final
