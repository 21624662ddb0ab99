# Shared by the bad-input CLI tests. Needs $smt (the binary) and $tmp (a scratch folder).
# expect CODE PATTERN -- args... : `smt args...` must exit CODE and print exactly one line on
# stderr containing PATTERN; counts into $checks and $fails and prints ok/FAIL with the message.
fails=0; checks=0
expect() {
  local code=$1 pattern=$2; shift 3
  checks=$((checks+1))
  "$smt" "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  local lines; lines=$(wc -l <"$tmp/err")
  if [ "$rc" -ne "$code" ] || ! grep -q -- "$pattern" "$tmp/err" || [ "$lines" -ne 1 ]; then
    echo "FAIL: smt $* -> exit $rc (want $code), stderr ($lines lines):"; cat "$tmp/err"; fails=$((fails+1))
  else
    echo "ok: smt $* -> $rc: $(cat "$tmp/err")"
  fi
}
