#!/usr/bin/env bash
# Prepares .device/ for the GPU machine (../shared/device/prepare.sh: Node + production node_modules), then trims
# what the run never loads (TypeScript sources, type declarations, source maps, docs, the musl binary, npm) so the
# carried tree stays under the device tool's 64 MiB limit.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p "$(git rev-parse --git-dir)/info"
bash ../shared/device/prepare.sh --deps >/dev/null
rm -f .device/npm.txz
m=.device/node_modules
rm -rf "$m/zod/src" "$m/koffi/vendor"
rm -rf "$m/koffi/doc" "$m/@koromix/koffi-linux-x64/musl_x64"
if [ -d "$m/koffi/src" ]; then find "$m/koffi/src" -type f ! -name "*.js" ! -name "*.cjs" ! -name "*.mjs" ! -name "*.json" -delete; fi
find "$m" \( -name '*.d.ts' -o -name '*.d.cts' -o -name '*.d.mts' -o -name '*.map' -o -name '*.md' -o -name '*.ts' \) -type f -delete
du -sh .device
