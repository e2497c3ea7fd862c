{#
    dbt's is_incremental(), except that a compile without introspection
    (`dbt compile --no-introspect`, e.g. the offline BigQuery check) renders the full-refresh
    SQL instead of failing: asking whether the table exists needs a warehouse connection.
#}
{% macro is_incremental() %}
    {% if not execute or not flags.INTROSPECT %}
        {{ return(false) }}
    {% endif %}
    {{ return(dbt.is_incremental()) }}
{% endmacro %}
