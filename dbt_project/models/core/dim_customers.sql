{#
    Current state of each customer. The SCD2 issue will read a snapshot of
    stg_shop__customers here instead and emit one row per version; valid_from, valid_to and
    is_current already carry that shape so consumers need not change.
#}

with

customers as (

    select * from {{ ref('stg_shop__customers') }}

),

customer_members as (

    select
        {{ integer_surrogate_key(['customer_id']) }} as customer_sk,
        customer_id,
        email_hash,
        country,
        city,
        loyalty_tier,
        signup_channel,
        has_marketing_opt_in,
        true as is_current,
        signup_date,
        signed_up_at,
        updated_at,
        updated_at as valid_from,
        cast(null as {{ type_timestamptz() }}) as valid_to
    from customers

),

special_members as (

    -- -1: a customer_id the customer extract does not (yet) contain
    select
        cast(-1 as {{ dbt.type_bigint() }}) as customer_sk,
        'unknown' as customer_id,
        cast(null as {{ dbt.type_string() }}) as email_hash,
        'unknown' as country,
        'unknown' as city,
        'unknown' as loyalty_tier,
        'unknown' as signup_channel,
        false as has_marketing_opt_in,
        true as is_current,
        cast(null as date) as signup_date,
        cast(null as {{ type_timestamptz() }}) as signed_up_at,
        cast(null as {{ type_timestamptz() }}) as updated_at,
        cast(null as {{ type_timestamptz() }}) as valid_from,
        cast(null as {{ type_timestamptz() }}) as valid_to

    union all

    -- -2: guest checkout (no customer_id)
    select
        cast(-2 as {{ dbt.type_bigint() }}) as customer_sk,
        'guest' as customer_id,
        cast(null as {{ dbt.type_string() }}) as email_hash,
        'guest' as country,
        'guest' as city,
        'guest' as loyalty_tier,
        'guest' as signup_channel,
        false as has_marketing_opt_in,
        true as is_current,
        cast(null as date) as signup_date,
        cast(null as {{ type_timestamptz() }}) as signed_up_at,
        cast(null as {{ type_timestamptz() }}) as updated_at,
        cast(null as {{ type_timestamptz() }}) as valid_from,
        cast(null as {{ type_timestamptz() }}) as valid_to

),

final as (

    select * from customer_members
    union all
    select * from special_members

)

select * from final
