{#
    Post-hook of every table the project builds: fresh planner statistics. PostgreSQL has
    none for a table just created or rewritten until autovacuum gets to it, and the next
    models and tests of the same run would be planned on guesses (badly: a mis-estimated
    join also triggers JIT compilation that costs seconds). DuckDB keeps its statistics
    up to date itself.
#}
{% macro analyze_relation() %}
    {{ return(adapter.dispatch('analyze_relation', 'retailml')()) }}
{% endmacro %}

{% macro default__analyze_relation() %}
    {{ return('') }}
{% endmacro %}

{% macro postgres__analyze_relation() %}
    {% if model.config.materialized in ('table', 'incremental', 'snapshot') %}
        {{ return('analyze ' ~ this) }}
    {% endif %}
    {{ return('') }}
{% endmacro %}


{#
    Pre-hook of every model on PostgreSQL, for the model's transaction only (set local):
      - jit = off: the models are one big statement each, whose plans (wide CASE
        aggregates, costs far above jit_above_cost) PostgreSQL would spend seconds compiling
        with LLVM (4 of the 5 seconds of int_churn_training on a small shop) for little gain;
      - work_mem = var('postgres_work_mem'): the server default (4MB) makes every large
        hash aggregate and sort spill to disk in batches.
#}
{% macro postgres_session_settings() %}
    {{ return(adapter.dispatch('postgres_session_settings', 'retailml')()) }}
{% endmacro %}

{% macro default__postgres_session_settings() %}
    {{ return('') }}
{% endmacro %}

{% macro postgres__postgres_session_settings() %}
    {{ return("set local jit = off; set local work_mem = '" ~ var('postgres_work_mem') ~ "'") }}
{% endmacro %}


{#
    Pre-hook of the ML models on PostgreSQL: no nested-loop joins in the model's
    transaction. Their joins of per-(customer, as-of day) aggregates get row estimates of
    1 where there are millions, and a nested loop then rescans one side per row (minutes on
    a few thousand customers); hash joins are right at every size here.
#}
{% macro no_nested_loops() %}
    {{ return(adapter.dispatch('no_nested_loops', 'retailml')()) }}
{% endmacro %}

{% macro default__no_nested_loops() %}
    {{ return('') }}
{% endmacro %}

{% macro postgres__no_nested_loops() %}
    {{ return('set local enable_nestloop = off') }}
{% endmacro %}
