#!/usr/bin/env bash
# Make or update the Mosquitto password file from a list of users.
#
#   deploy/mosquitto/make_passwd.sh PASSWD_FILE USERS_FILE
#
# USERS_FILE has one "username:password" a line (blank lines and # comments are skipped);
# keep it secret (0600) or delete it afterwards. Each user is added to PASSWD_FILE (created if
# missing) with `mosquitto_passwd -b`, which stores a salted hash; a user already there gets
# the new password, other users are kept. To remove a user: `mosquitto_passwd -D FILE USER`.
# Every username the ACL knows: make_acl.py --config config.yaml --list-users.
# Then reload the broker: `systemctl reload mosquitto` (SIGHUP).
set -euo pipefail
if [[ $# -ne 2 ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
passwd=$1
users=$2
umask 077
[[ -f $passwd ]] || : >"$passwd"
n=0
while IFS= read -r line || [[ -n $line ]]; do
    [[ -z ${line//[[:space:]]/} || $line == \#* ]] && continue
    user=${line%%:*}
    pass=${line#*:}
    if [[ $user == "$line" || -z $user || -z $pass ]]; then
        echo "make_passwd: skipping a line without user:password" >&2
        continue
    fi
    mosquitto_passwd -b "$passwd" "$user" "$pass"
    n=$((n + 1))
done <"$users"
echo "make_passwd: $n user(s) set in $passwd" >&2
