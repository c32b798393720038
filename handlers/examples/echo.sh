#!/bin/sh
# The echo agent of `runtimeuse --agent echo` in plain POSIX shell, on the
# raw handler protocol (no SDK; sed, awk and sleep only):
#
#   runtimeuse --handler handlers/examples/echo.sh
#
# Answers by the user prompt: ECHO:<text>, STRUCTURED:<json object>,
# SLOW:<ms> (cancellable), STREAM:<n>, STREAM_TEXT:<text>, ERROR:<msg>,
# WRITE_FILE:<path> <content>, READ_FILE:<path>, ENV:<name>; anything else
# is echoed.
#
# Every line the runtime writes is compact JSON starting with
# {"type":"invoke", or {"type":"cancel", (protocol/handler-protocol.md).
# Fields are picked out of it with a small awk JSON scanner. Strings stay
# JSON-escaped wherever they are only copied into the reply.

# json_get KEY: the raw JSON value of KEY in the object on stdin (top level).
json_get() {
  LC_ALL=C awk -v key="$1" '
    function skip_ws() { while (i <= n && index(" \t\r\n", substr(s, i, 1))) i++ }
    function scan_string(   start) {
      start = i; i++
      while (i <= n) {
        c = substr(s, i, 1)
        if (c == "\\") { i += 2; continue }
        i++
        if (c == "\"") break
      }
      return substr(s, start, i - start)
    }
    function scan_value(   start, depth, c) {
      skip_ws(); start = i; c = substr(s, i, 1)
      if (c == "\"") return scan_string()
      if (c == "{" || c == "[") {
        depth = 0
        while (i <= n) {
          c = substr(s, i, 1)
          if (c == "\"") { scan_string(); continue }
          if (c == "{" || c == "[") depth++
          if (c == "}" || c == "]") { depth--; if (depth == 0) { i++; break } }
          i++
        }
        return substr(s, start, i - start)
      }
      while (i <= n && !index(",}] \t\r\n", substr(s, i, 1))) i++
      return substr(s, start, i - start)
    }
    { s = s $0 }
    END {
      n = length(s); i = 1; skip_ws()
      if (substr(s, i, 1) != "{") exit 1
      i++
      while (i <= n) {
        skip_ws()
        if (substr(s, i, 1) == "}") exit 1
        k = scan_string(); skip_ws(); i++   # the colon
        v = scan_value(); skip_ws(); i++    # the comma
        if (k == "\"" key "\"") { printf "%s", v; exit 0 }
      }
      exit 1
    }'
}

# json_str: the escaped content of the JSON string on stdin (quotes off).
json_str() {
  sed -e 's/^"//' -e 's/"$//'
}

# unescape: JSON string escapes on stdin -> raw bytes. The runtime escapes
# only quotes, backslashes and control characters, so \u00XX is all the
# \u there is to decode.
unescape() {
  LC_ALL=C awk '
    BEGIN { hex = "0123456789abcdef" }
    { s = s (NR > 1 ? "\n" : "") $0 }
    END {
      n = length(s); out = ""
      for (i = 1; i <= n; i++) {
        c = substr(s, i, 1)
        if (c != "\\") { out = out c; continue }
        c = substr(s, ++i, 1)
        if (c == "n") out = out "\n"
        else if (c == "t") out = out "\t"
        else if (c == "r") out = out "\r"
        else if (c == "b") out = out "\b"
        else if (c == "f") out = out "\f"
        else if (c == "u" && substr(s, i + 1, 2) == "00") {
          code = (index(hex, tolower(substr(s, i + 3, 1))) - 1) * 16 + index(hex, tolower(substr(s, i + 4, 1))) - 1
          out = out sprintf("%c", code); i += 4
        } else if (c == "u") { out = out "\\u" }
        else out = out c
      }
      printf "%s", out
    }'
}

# escape: raw bytes on stdin -> the content of a JSON string.
escape() {
  LC_ALL=C awk -v RS='\001' '
    BEGIN { for (k = 1; k < 32; k++) ctl[sprintf("%c", k)] = sprintf("\\u%04x", k)
            ctl["\n"] = "\\n"; ctl["\t"] = "\\t"; ctl["\r"] = "\\r" }
    { s = s $0 }
    END {
      n = length(s); out = ""
      for (i = 1; i <= n; i++) {
        c = substr(s, i, 1)
        if (c == "\\") out = out "\\\\"
        else if (c == "\"") out = out "\\\""
        else if (c in ctl) out = out ctl[c]
        else out = out c
      }
      printf "%s", out
    }'
}

# emit LINE: one protocol line (printf is unbuffered: it arrives at once).
emit() { printf '%s\n' "$1"; }

result() { emit "{\"type\":\"result\",\"id\":\"$id\",\"text\":\"$1\",\"metadata\":{\"handler\":\"echo-sh\"}}"; }
error() { emit "{\"type\":\"error\",\"id\":\"$id\",\"error\":\"$1\",\"metadata\":{\"handler\":\"echo-sh\"}}"; }
assistant() { emit "{\"type\":\"assistant\",\"id\":\"$id\",\"text_blocks\":[\"$1\"]}"; }

is_count() { case "$1" in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }

# SLOW runs in the background so that a cancel can still be read.
slow_pid=
slow() {
  if ! is_count "$1"; then error "SLOW: not a number of milliseconds: $1"; return; fi
  (
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$(awk -v ms="$1" 'BEGIN { printf "%.3f", ms / 1000 }')" &
    sleeper=$!
    wait "$sleeper"
    result done
  ) &
  slow_pid=$!
}

# cancel ID: stops SLOW if it is still running for ID; ignored otherwise
# (the invocation finished already).
cancel() {
  [ -n "$slow_pid" ] && [ "$1" = "$id" ] || return 0
  if kill "$slow_pid" 2>/dev/null; then
    wait "$slow_pid" 2>/dev/null
    error cancelled
  fi
  slow_pid=
}

stream() {
  if ! is_count "$1"; then error "STREAM: not a count: $1"; return; fi
  i=1
  while [ "$i" -le "$1" ]; do assistant "message $i of $1"; i=$((i + 1)); done
  result "streamed $1 messages"
}

write_file() {
  raw=$(printf '%s' "$1" | unescape; printf x); raw=${raw%x}
  path=${raw%% *}
  case "$raw" in *" "*) content=${raw#* } ;; *) content= ;; esac
  if mkdir -p "$(dirname "$path")" 2>/dev/null && printf '%s' "$content" > "$path" 2>/dev/null; then
    result "wrote $(printf '%s' "$path" | escape)"
  else
    error "WRITE_FILE: cannot write $(printf '%s' "$path" | escape)"
  fi
}

read_file() {
  path=$(printf '%s' "$1" | unescape; printf x); path=${path%x}
  if [ -f "$path" ] && [ -r "$path" ]; then
    result "$(escape < "$path")"
  else
    error "READ_FILE: cannot read $(printf '%s' "$path" | escape)"
  fi
}

env_var() {
  name=$(printf '%s' "$1" | unescape)
  value=$(printf '%s' "$line" | json_get env | json_get "$name") || { error "ENV: $1 is not set"; return; }
  result "$(printf '%s' "$value" | json_str)"
}

invoke() {
  slow_pid=
  id=$(printf '%s' "$line" | json_get id | json_str)
  prompt=$(printf '%s' "$line" | json_get user_prompt | json_str)
  rest=${prompt#*:}
  case "$prompt" in
    ECHO:*) result "$rest" ;;
    STRUCTURED:*)
      object=$(printf '%s' "$rest" | unescape)
      case "$object" in
        '{'*'}') emit "{\"type\":\"result\",\"id\":\"$id\",\"structured_output\":$object,\"metadata\":{\"handler\":\"echo-sh\"}}" ;;
        *) error "STRUCTURED: expected a JSON object" ;;
      esac ;;
    SLOW:*) slow "$rest" ;;
    STREAM:*) stream "$rest" ;;
    STREAM_TEXT:*) assistant "$rest"; result done ;;
    ERROR:*) error "$rest" ;;
    WRITE_FILE:*) write_file "$rest" ;;
    READ_FILE:*) read_file "$rest" ;;
    ENV:*) env_var "$rest" ;;
    *) result "$prompt" ;;
  esac
}

while IFS= read -r line; do
  case "$line" in
    '{"type":"invoke",'*) invoke ;;
    '{"type":"cancel",'*) cancel "$(printf '%s' "$line" | json_get id | json_str)" ;;
  esac
done
# stdin closed: the runtime wants us gone.
[ -z "$slow_pid" ] || kill "$slow_pid" 2>/dev/null
