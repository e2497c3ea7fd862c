{#
    The customer feature definitions, used by int_churn_training (as of each cutoff, behind
    ml_churn_training) and ml_customer_features (as of the latest day) so training and
    scoring cannot diverge. Column names and order are the contract in retailml.features.spec.

    An "order" here is an order with at least one product line of positive quantity (a
    purchase; fct_orders.units_sold > 0); a return is a product line with negative quantity.
    Shipping-fee lines never count.

    Inputs (a caller defines them as CTEs and passes their names):
        customer_orders      {{ customer_orders('orders') }} over fct_orders
        customer_categories  int_customer_categories_daily (customer, category, day)
        customer versions    dim_customers where customer_sk > 0
    The features read orders and per-day categories rather than order lines: the joins with
    the spine are several times smaller, need no count(distinct), and nothing re-reads the
    order-line fact.
#}

{#
    The orders of identified customers (a dim_customers version, not unknown or guest), from
    fct_orders: one row per order, with what the features need.
#}
{% macro customer_orders(orders) %}
    select
        customer_id,
        order_id,
        order_date,
        units_sold > 0 as is_purchase,
        purchase_net_amount as spend,
        units_sold as units_bought,
        units_returned
    from {{ orders }}
    where customer_sk > 0
{% endmacro %}


{#
    What the features of each row of `spine` (customer_id, as_of_date) may see: the three
    macros below are the only place that decides it (point in time), and the test
    `feature_inputs_precede_as_of` re-derives the inputs through them.
#}

{#
    The customer's version (`customers`: dim_customers' SCD2 versions) in effect just before
    the as-of day starts (valid_from < start of as_of_date <= valid_to), for the categorical
    attributes. One row per spine row whose customer has such a version.
#}
{% macro feature_attributes(spine, customers) %}
    {%- set as_of_at = local_day_start('attribute_spine.as_of_date') -%}
    select
        attribute_spine.customer_id,
        attribute_spine.as_of_date,
        attribute_versions.signup_date,
        attribute_versions.country,
        attribute_versions.loyalty_tier,
        attribute_versions.signup_channel,
        attribute_versions.valid_from as attributes_valid_from
    from {{ spine }} as attribute_spine
    inner join {{ customers }} as attribute_versions
        on
            attribute_spine.customer_id = attribute_versions.customer_id
            and attribute_versions.valid_from < {{ as_of_at }}
            and (attribute_versions.valid_to is null or attribute_versions.valid_to >= {{ as_of_at }})
{% endmacro %}


{# The customer's orders (customer_orders) dated before the as-of day. One row per (spine row, order). #}
{% macro feature_orders(spine, orders) %}
    select
        order_spine.customer_id,
        order_spine.as_of_date,
        spine_orders.order_id,
        spine_orders.order_date,
        spine_orders.is_purchase,
        spine_orders.spend,
        spine_orders.units_bought,
        spine_orders.units_returned
    from {{ spine }} as order_spine
    inner join {{ orders }} as spine_orders
        on
            order_spine.customer_id = spine_orders.customer_id
            and spine_orders.order_date < order_spine.as_of_date
{% endmacro %}


{#
    The categories the customer bought (int_customer_categories_daily) in the 365 days before
    the as-of day. One row per (spine row, category, day).
#}
{% macro feature_categories(spine, categories) %}
    select
        category_spine.customer_id,
        category_spine.as_of_date,
        spine_categories.category,
        spine_categories.order_date
    from {{ spine }} as category_spine
    inner join {{ categories }} as spine_categories
        on
            category_spine.customer_id = spine_categories.customer_id
            and spine_categories.order_date < category_spine.as_of_date
            and spine_categories.order_date >= {{ add_days('category_spine.as_of_date', -365) }}
{% endmacro %}


{#
    One row per row of `spine` (customer_id, as_of_date) whose customer has a version in
    effect before the as-of day: the features, computed ONLY from the three inputs above.
    Windows are the N days before as_of_date: [as_of_date - N, as_of_date).
    The inputs are stacked (union all) and aggregated once per spine row, rather than
    aggregated apart and joined back: no join of aggregates for a planner to misjudge, and
    categories are made distinct per spine row before counting (no count(distinct)).
#}
{% macro customer_features(spine, orders, categories, customers) %}
    {%- set string, bigint, double = dbt.type_string(), dbt.type_bigint(), type_double() -%}
    {%- set purchase_90d = 'feature_inputs.is_purchase and feature_inputs.order_date >= '
        ~ add_days('feature_inputs.as_of_date', -90) -%}
    {%- set in_365d = 'feature_inputs.order_date >= ' ~ add_days('feature_inputs.as_of_date', -365) -%}
    {%- set purchase_365d = 'feature_inputs.is_purchase and ' ~ in_365d -%}
    select
        aggregates.customer_id,
        aggregates.as_of_date,
        {{ days_between('aggregates.last_order_date', 'aggregates.as_of_date') }} as recency_days,
        cast(aggregates.orders_90d as {{ bigint }}) as frequency_90d,
        cast(aggregates.spend_90d as {{ double }}) as monetary_90d,
        cast(aggregates.orders_365d as {{ bigint }}) as frequency_365d,
        cast(aggregates.spend_365d as {{ double }}) as monetary_365d,
        cast(
            coalesce(aggregates.spend_365d / nullif(aggregates.orders_365d, 0), 0) as {{ double }}
        ) as avg_order_value_365d,
        cast(
            least(coalesce(
                cast(aggregates.units_returned_365d as {{ double }}) / nullif(aggregates.units_bought_365d, 0),
                0
            ), 1) as {{ double }}
        ) as return_rate_365d,
        {{ days_between('aggregates.signup_date', 'aggregates.as_of_date') }} as tenure_days,
        cast(aggregates.categories_365d as {{ bigint }}) as distinct_categories_365d,
        aggregates.country,
        aggregates.loyalty_tier,
        aggregates.signup_channel
    from (
        select
            feature_inputs.customer_id,
            feature_inputs.as_of_date,
            max(feature_inputs.signup_date) as signup_date,
            max(feature_inputs.country) as country,
            max(feature_inputs.loyalty_tier) as loyalty_tier,
            max(feature_inputs.signup_channel) as signup_channel,
            max(case when feature_inputs.is_purchase then feature_inputs.order_date end) as last_order_date,
            sum(case when {{ purchase_90d }} then 1 else 0 end) as orders_90d,
            sum(case when {{ purchase_90d }} then feature_inputs.spend else 0 end) as spend_90d,
            sum(case when {{ purchase_365d }} then 1 else 0 end) as orders_365d,
            sum(case when {{ purchase_365d }} then feature_inputs.spend else 0 end) as spend_365d,
            sum(case when {{ purchase_365d }} then feature_inputs.units_bought else 0 end) as units_bought_365d,
            sum(case when {{ in_365d }} then feature_inputs.units_returned else 0 end) as units_returned_365d,
            count(feature_inputs.category) as categories_365d
        from (
            select
                seen_attributes.customer_id,
                seen_attributes.as_of_date,
                1 as attribute_rows,
                seen_attributes.signup_date,
                seen_attributes.country,
                seen_attributes.loyalty_tier,
                seen_attributes.signup_channel,
                cast(null as date) as order_date,
                cast(null as boolean) as is_purchase,
                cast(null as {{ double }}) as spend,
                cast(null as {{ bigint }}) as units_bought,
                cast(null as {{ bigint }}) as units_returned,
                cast(null as {{ string }}) as category
            from (
                {{ feature_attributes(spine, customers) }}
            ) as seen_attributes

            union all

            select
                seen_orders.customer_id,
                seen_orders.as_of_date,
                0 as attribute_rows,
                cast(null as date) as signup_date,
                cast(null as {{ string }}) as country,
                cast(null as {{ string }}) as loyalty_tier,
                cast(null as {{ string }}) as signup_channel,
                seen_orders.order_date,
                seen_orders.is_purchase,
                seen_orders.spend,
                seen_orders.units_bought,
                seen_orders.units_returned,
                cast(null as {{ string }}) as category
            from (
                {{ feature_orders(spine, orders) }}
            ) as seen_orders

            union all

            select distinct
                seen_categories.customer_id,
                seen_categories.as_of_date,
                0 as attribute_rows,
                cast(null as date) as signup_date,
                cast(null as {{ string }}) as country,
                cast(null as {{ string }}) as loyalty_tier,
                cast(null as {{ string }}) as signup_channel,
                cast(null as date) as order_date,
                cast(null as boolean) as is_purchase,
                cast(null as {{ double }}) as spend,
                cast(null as {{ bigint }}) as units_bought,
                cast(null as {{ bigint }}) as units_returned,
                seen_categories.category
            from (
                {{ feature_categories(spine, categories) }}
            ) as seen_categories
        ) as feature_inputs
        group by feature_inputs.customer_id, feature_inputs.as_of_date
        having sum(feature_inputs.attribute_rows) = 1
    ) as aggregates
{% endmacro %}
