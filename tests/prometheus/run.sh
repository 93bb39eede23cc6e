#!/usr/bin/env bash
# The alerts and dashboards (README "Dashboards, alerts and runbooks"):
#   1. the dashboards in the chart are what scripts/dashboards.py writes;
#   2. `promtool check rules` on the rules file, `promtool test rules` on
#      tests/prometheus/rules_test.yaml (every alert, firing and quiet);
#   3. tests/prometheus/live.py: a real Prometheus scraping three sidecars replaying the
#      real data (one engine corrupting results) and the operator; every panel's query and
#      every alert's expression return data, the expected alerts fire.
# Needs python3, and promtool and prometheus (Debian's `prometheus` package; .ci/run
# installs it): without them steps 2 and 3 print one SKIPPED line and the script exits 77.
set -euo pipefail
cd "$(dirname "$0")/../.."

python3 scripts/dashboards.py --check
echo "PASS dashboards: charts/openmatch-gossip/files/dashboards/ is what scripts/dashboards.py writes"
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    echo "SKIPPED: the alert rules' tests and the live Prometheus test need promtool and prometheus (apt-get install prometheus)"
    exit 77
fi
promtool check rules charts/openmatch-gossip/files/prometheus-rules.yaml
(cd tests/prometheus && promtool test rules rules_test.yaml)
echo "PASS promtool check rules, promtool test rules"
# shellcheck source=tests/chart/binaries.sh
source tests/chart/binaries.sh
test_binaries
start=$SECONDS
python3 tests/prometheus/live.py "$BINDIR" --seconds 60
echo "PASS live Prometheus: panels, alert expressions and alerts ($((SECONDS - start)) s)"
