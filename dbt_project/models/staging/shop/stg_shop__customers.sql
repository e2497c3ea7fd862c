with

source as (

    select * from {{ source('shop', 'customers') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by _id
            order by updated_at desc, _extracted_at desc, _batch_id desc
        ) as version_rank
    from source

),

latest as (

    select * from ranked
    where version_rank = 1

),

final as (

    -- No clear PII past this point: name, e-mail and street address stay in raw.
    select
        _id as customer_id,
        {{ sha256_hex("'" ~ var('pii_salt') | replace("'", "''") ~ "' || lower(trim(email))") }} as email_hash,
        {{ json_extract_text('_document', ['address', 'country']) }} as country,
        {{ json_extract_text('_document', ['address', 'city']) }} as city,
        loyalty_tier,
        signup_channel,
        marketing_opt_in as has_marketing_opt_in,
        {{ utc_to_local_date(naive_to_utc('created_at', 'UTC')) }} as signup_date,
        {{ naive_to_utc('created_at', 'UTC') }} as signed_up_at,
        {{ naive_to_utc('updated_at', 'UTC') }} as updated_at,
        _batch_id as batch_id,
        _extracted_at as extracted_at
    from latest

)

select * from final
