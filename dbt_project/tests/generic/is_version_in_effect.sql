{#
    Point-in-time check of a fact's key into an SCD2 dimension: every row points at THE
    version of its entity in effect at `at` (valid_from <= at < valid_to). Fails for a row
    whose version does not cover `at`, and for a row that points elsewhere (e.g. the unknown
    member) while a version of its entity covers `at`. Special members (null valid_from)
    are left out on the dimension side.
#}
{% test is_version_in_effect(model, column_name, to, field, natural_key, at) %}

with

facts as (

    select
        {{ column_name }} as version_key,
        {{ natural_key }} as natural_key,
        {{ at }} as effective_at
    from {{ model }}

),

versions as (

    select
        {{ field }} as version_key,
        {{ natural_key }} as natural_key,
        valid_from,
        valid_to
    from {{ to }}
    where valid_from is not null

),

wrong_version as (

    select facts.*
    from facts
    inner join versions
        on facts.version_key = versions.version_key
    where
        facts.effective_at < versions.valid_from
        or facts.effective_at >= versions.valid_to

),

missed_version as (

    select facts.*
    from facts
    inner join versions
        on
            facts.natural_key = versions.natural_key
            and facts.effective_at >= versions.valid_from
            and (versions.valid_to is null or facts.effective_at < versions.valid_to)
    where facts.version_key != versions.version_key

),

final as (

    select * from wrong_version
    union all
    select * from missed_version

)

select * from final

{% endtest %}
