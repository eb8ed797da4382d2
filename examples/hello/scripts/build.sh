#!/bin/sh
# The "build": renders the site into public/.
set -eu
mkdir -p public
echo "building site..."
printf '<h1>hello from locald</h1>\n<p>built at %s</p>\n' "$(date -u +%H:%M:%S)" > public/index.html
echo "wrote public/index.html"
