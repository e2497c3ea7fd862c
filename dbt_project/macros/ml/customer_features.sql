{#
    The customer feature definitions, used by ml_churn_training (as of each cutoff) and
    ml_customer_features (as of the latest day) so training and scoring cannot diverge.
    Column names and order are the contract in retailml.features.spec.

    An "order" here is an order with at least one product line of positive quantity; a
    return is a product line with negative quantity. Shipping-fee lines never count.
#}

{#
    Product lines of identified customers, with the product's category: the input of
    customer_features() and of the marts' eligibility and label logic.
    One row per product line of an order placed by a known customer.
#}
{% macro customer_product_lines(order_lines, products) %}
    select
        lines.customer_id,
        lines.order_id,
        products.category,
        lines.quantity,
        lines.net_amount,
        lines.is_return,
        lines.order_date
    from {{ order_lines }} as lines
    inner join {{ products }} as products
        on lines.product_sk = products.product_sk
    where
        lines.is_product_line
        and lines.customer_sk > 0
{% endmacro %}


{#
    One row per row of `spine` (customer_id, as_of_date) whose customer is in `customers`:
    the features computed ONLY from `lines` (customer_product_lines) with
    order_date < as_of_date, plus the customer's attributes from `customers` (dim_customers).
    Windows are the N days before as_of_date: [as_of_date - N, as_of_date).
#}
{% macro customer_features(spine, lines, customers) %}
    {%- set is_order = 'not feature_lines.is_return' -%}
    {%- set in_90d = 'feature_lines.order_date >= ' ~ add_days('feature_spine.as_of_date', -90) -%}
    {%- set in_365d = 'feature_lines.order_date >= ' ~ add_days('feature_spine.as_of_date', -365) -%}
    select
        aggregates.customer_id,
        aggregates.as_of_date,
        {{ days_between('aggregates.last_order_date', 'aggregates.as_of_date') }} as recency_days,
        cast(aggregates.orders_90d as {{ dbt.type_bigint() }}) as frequency_90d,
        cast(aggregates.spend_90d as {{ type_double() }}) as monetary_90d,
        cast(aggregates.orders_365d as {{ dbt.type_bigint() }}) as frequency_365d,
        cast(aggregates.spend_365d as {{ type_double() }}) as monetary_365d,
        cast(
            coalesce(aggregates.spend_365d / nullif(aggregates.orders_365d, 0), 0) as {{ type_double() }}
        ) as avg_order_value_365d,
        cast(
            least(coalesce(
                cast(aggregates.units_returned_365d as {{ type_double() }})
                / nullif(aggregates.units_bought_365d, 0),
                0
            ), 1) as {{ type_double() }}
        ) as return_rate_365d,
        {{ days_between('aggregates.signup_date', 'aggregates.as_of_date') }} as tenure_days,
        cast(aggregates.categories_365d as {{ dbt.type_bigint() }}) as distinct_categories_365d,
        aggregates.country,
        aggregates.loyalty_tier,
        aggregates.signup_channel
    from (
        select
            feature_spine.customer_id,
            feature_spine.as_of_date,
            feature_customers.signup_date,
            feature_customers.country,
            feature_customers.loyalty_tier,
            feature_customers.signup_channel,
            max(case when {{ is_order }} then feature_lines.order_date end) as last_order_date,
            count(distinct case when {{ is_order }} and {{ in_90d }} then feature_lines.order_id end)
                as orders_90d,
            coalesce(sum(case when {{ is_order }} and {{ in_90d }} then feature_lines.net_amount end), 0)
                as spend_90d,
            count(distinct case when {{ is_order }} and {{ in_365d }} then feature_lines.order_id end)
                as orders_365d,
            coalesce(sum(case when {{ is_order }} and {{ in_365d }} then feature_lines.net_amount end), 0)
                as spend_365d,
            sum(case when {{ is_order }} and {{ in_365d }} then feature_lines.quantity end)
                as units_bought_365d,
            coalesce(sum(case when feature_lines.is_return and {{ in_365d }} then -feature_lines.quantity end), 0)
                as units_returned_365d,
            count(distinct case when {{ is_order }} and {{ in_365d }} then feature_lines.category end)
                as categories_365d
        from {{ spine }} as feature_spine
        inner join {{ customers }} as feature_customers
            on feature_spine.customer_id = feature_customers.customer_id
        left join {{ lines }} as feature_lines
            on
                feature_spine.customer_id = feature_lines.customer_id
                and feature_lines.order_date < feature_spine.as_of_date
        group by
            feature_spine.customer_id,
            feature_spine.as_of_date,
            feature_customers.signup_date,
            feature_customers.country,
            feature_customers.loyalty_tier,
            feature_customers.signup_channel
    ) as aggregates
{% endmacro %}
