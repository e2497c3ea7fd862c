{#
    The churn training rows behind the view ml_churn_training, incremental by cutoff_date
    (delete+insert of whole cutoffs). A cutoff's rows read the lines before it (features) and
    the `churn_horizon_days` from it (label), so a run rebuilds
      - new cutoffs (a label window became fully observed), and
      - every cutoff after (earliest changed day - horizon), where the changed days are those
        of fct_orders / int_customer_categories_daily rows written since this model's last
        run, and the days customer versions extracted since then took effect.
    Everything else stays, so a daily run computes at most a cutoff or two.
#}
{{
    config(
        materialized='incremental',
        unique_key='cutoff_date',
        incremental_strategy=('insert_overwrite' if target.type == 'bigquery' else 'delete+insert'),
        partition_by=({'field': 'cutoff_date', 'data_type': 'date'} if target.type == 'bigquery' else none),
        indexes=([{'columns': ['cutoff_date']}, {'columns': ['transformed_at']}] if target.type == 'postgres' else []),
        pre_hook="{{ no_nested_loops() }}",
        on_schema_change='append_new_columns',
    )
}}

{%- set horizon_days = var('churn_horizon_days') | int -%}
{%- set rebuild_cutoffs = int_churn_training_rebuild_predicate() if is_incremental() else 'true' %}

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

customers as (

    select
        customer_id,
        signup_date
    from customer_versions
    where is_current

),

first_orders as (

    select
        customer_id,
        min(order_date) as first_order_date
    from customer_orders
    where is_purchase
    group by customer_id

),

data_range as (

    select
        min(date_day) as first_order_date,
        max(date_day) as last_order_date
    from dates

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

cutoffs_to_build as (

    select cutoff_date from cutoffs
    where {{ rebuild_cutoffs }}

),

spine as (

    -- Customers who signed up and ordered before the cutoff.
    select
        customers.customer_id,
        cutoffs_to_build.cutoff_date as as_of_date
    from customers
    inner join first_orders
        on customers.customer_id = first_orders.customer_id
    inner join cutoffs_to_build
        on
            customers.signup_date < cutoffs_to_build.cutoff_date
            and first_orders.first_order_date < cutoffs_to_build.cutoff_date

),

features as (

    {{ customer_features('spine', 'customer_orders', 'customer_categories', 'customer_versions') }}

),

labels as (

    -- Churned: no order in [cutoff_date, cutoff_date + horizon).
    select
        spine.customer_id,
        spine.as_of_date,
        count(customer_orders.order_id) = 0 as is_churned
    from spine
    left join customer_orders
        on
            spine.customer_id = customer_orders.customer_id
            and customer_orders.is_purchase
            and spine.as_of_date <= customer_orders.order_date
            and customer_orders.order_date < {{ add_days('spine.as_of_date', horizon_days) }}
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
        labels.is_churned,
        {{ run_started_at_literal() }} as transformed_at
    from features
    inner join labels
        on
            features.customer_id = labels.customer_id
            and features.as_of_date = labels.as_of_date

)

select * from final
