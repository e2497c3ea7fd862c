{#
    SCD type 2 customer dimension: one row per version of each customer, from the snapshot
    snap_shop__customers, plus the special members. A fact joins the version whose
    [valid_from, valid_to) holds its timestamp (see fct_order_lines).
#}

with

customer_versions as (

    select * from {{ ref('snap_shop__customers') }}

),

numbered as (

    select
        *,
        row_number() over (partition by customer_id order by dbt_valid_from) as version_number
    from customer_versions

),

customer_members as (

    select
        {{ integer_surrogate_key(['customer_id', epoch_microseconds('dbt_valid_from')]) }} as customer_sk,
        customer_id,
        email_hash,
        country,
        city,
        loyalty_tier,
        signup_channel,
        cast(version_number as {{ dbt.type_bigint() }}) as version_number,
        has_marketing_opt_in,
        dbt_valid_to is null as is_current,
        signup_date,
        signed_up_at,
        updated_at,
        -- The first version known also stands for the time from signup until it was first
        -- extracted: what the customer looked like before is not known.
        case
            when version_number = 1 and signed_up_at < dbt_valid_from then signed_up_at
            else dbt_valid_from
        end as valid_from,
        dbt_valid_to as valid_to,
        extracted_at
    from numbered

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
        cast(1 as {{ dbt.type_bigint() }}) as version_number,
        false as has_marketing_opt_in,
        true as is_current,
        cast(null as date) as signup_date,
        cast(null as {{ type_timestamptz() }}) as signed_up_at,
        cast(null as {{ type_timestamptz() }}) as updated_at,
        cast(null as {{ type_timestamptz() }}) as valid_from,
        cast(null as {{ type_timestamptz() }}) as valid_to,
        cast(null as {{ type_timestamptz() }}) as extracted_at

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
        cast(1 as {{ dbt.type_bigint() }}) as version_number,
        false as has_marketing_opt_in,
        true as is_current,
        cast(null as date) as signup_date,
        cast(null as {{ type_timestamptz() }}) as signed_up_at,
        cast(null as {{ type_timestamptz() }}) as updated_at,
        cast(null as {{ type_timestamptz() }}) as valid_from,
        cast(null as {{ type_timestamptz() }}) as valid_to,
        cast(null as {{ type_timestamptz() }}) as extracted_at

),

final as (

    select * from customer_members
    union all
    select * from special_members

)

select * from final
