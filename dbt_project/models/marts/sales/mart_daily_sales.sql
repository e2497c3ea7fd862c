with

order_lines as (

    select * from {{ ref('fct_order_lines') }}

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
        cast(sum(net_amount) as {{ type_double() }}) as net_revenue
    from lines
    group by order_date, category, channel

)

select * from final
