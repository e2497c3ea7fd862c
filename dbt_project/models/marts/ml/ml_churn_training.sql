{#
    A view: the rows live in the incremental table int_churn_training, which also keeps the
    `transformed_at` its incremental runs need; this view is the contract the Python side
    reads (retailml.features.spec).
#}
{{ config(materialized='view') }}

with

training_rows as (

    select * from {{ ref('int_churn_training') }}

),

final as (

    select
        customer_id,
        cutoff_date,
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
        signup_channel,
        is_churned
    from training_rows

)

select * from final
