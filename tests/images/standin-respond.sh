#!/bin/sh
# One HTTP exchange on stdin/stdout (busybox nc -ll -e): 200 for any method and path.
read -r method path _ || exit 0
cr=$(printf '\r')
while read -r line; do
  line=${line%"$cr"}
  [ -z "$line" ] && break
done
body="berth stand-in: $method $path"
printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "${#body}" "$body"
