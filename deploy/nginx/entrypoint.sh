#!/bin/sh
# Entry point of deploy/nginx/Containerfile: render the templates the way the official nginx image does
# (only variables whose names match NGINX_ENVSUBST_FILTER are substituted, so nginx's own $host etc. stay),
# then exec the command (nginx in the foreground, which receives the stop signal).
set -eu

templates=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
output=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
filter=${NGINX_ENVSUBST_FILTER:-}

if [ -d "$templates" ]; then
    # "$NAME" for every environment variable the filter selects, as envsubst's SHELL-FORMAT argument.
    names=$(env | cut -d= -f1 | grep -E "${filter:-.}" | sed 's/^/$/' | tr '\n' ' ')
    for template in "$templates"/*"$suffix"; do
        [ -f "$template" ] || continue
        target="$output/$(basename "$template" "$suffix")"
        envsubst "$names" <"$template" >"$target"
        echo "entrypoint: $template -> $target" >&2
    done
fi
exec "$@"
