# bash completion for directorctl(8).
# Installed as $(PREFIX)/share/bash-completion/completions/directorctl by make install
# (/usr/local by default, where bash-completion also looks).
# The command list is director/ctl.py's (tests/unit/test_docs_completion.py
# checks it); virtual services and real servers come from the running daemon
# (directorctl -Sn), as the words drain, disable and enable take. --socket may
# come before or after the command (director/ctl.py). docs/completion/_directorctl
# is the zsh completion, with the same logic.

_directorctl_commands="status drain disable enable reload maintenance check-config import-keepalived"
_directorctl_ipvsadm_options="-A -E -D -C -R -S -a -e -d -L -l -Z --set --start-daemon
--stop-daemon -h -t -u -f --sctp-service -s -p -M -r -g -i -m -w -x -y -c -n --numeric
--exact --stats --rate --timeout --daemon --sort --persistent-conn --tun-info -6 -o --ops
--pe -b --sched-flags --tun-type --tun-port --tun-nocsum --tun-csum --tun-remcsum
--add-service --edit-service --delete-service --clear --restore --save --add-server
--edit-server --delete-server --list --zero --help --version"

# The words of the line up to the cursor, split on blanks only: bash's own
# COMP_WORDS splits tcp:10.0.0.1:80 at its colons (COMP_WORDBREAKS).
_directorctl_words=()
_directorctl_split() {
    local line=${COMP_LINE:0:COMP_POINT}
    read -ra _directorctl_words <<<"$line"
    [[ -z $line || $line == *[[:space:]] ]] && _directorctl_words+=("")
}

# The socket options already typed, to pass on to directorctl -Sn.
_directorctl_socket_args() {
    local i last=$((${#_directorctl_words[@]} - 1))
    for ((i = 1; i < last; i++)); do
        case ${_directorctl_words[i]} in
            --socket) printf '%s\n' --socket "${_directorctl_words[i + 1]}" ;;
            --socket=*) printf '%s\n' "${_directorctl_words[i]}" ;;
        esac
    done
}

# Virtual services as drain/disable/enable take them (tcp:IP:PORT,
# udp:[IPv6]:PORT, fwm:MARK, fwm:MARK:ipv6), or with $1 one such service, its
# real servers (IP:PORT, [IPv6]:PORT). -Sn prints an IPv6 fwmark service's
# lines with -6 after the mark: `-A -f 6 -6 -s wlc`, `-a -f 6 -6 -r [::1]:80`.
_directorctl_table() {
    local -a socket_args
    mapfile -t socket_args < <(_directorctl_socket_args)
    directorctl "${socket_args[@]}" -Sn 2>/dev/null | awk -v want="$1" '
        function service(flag, value, v6) {
            if (flag == "-t") return "tcp:" value
            if (flag == "-u") return "udp:" value
            if (flag == "--sctp-service") return "sctp:" value
            if (flag == "-f") return "fwm:" value (v6 ? ":ipv6" : "")
        }
        { v6 = ($4 == "-6"); vs = service($2, $3, v6) }
        $1 == "-A" && want == "" { print vs }
        $1 == "-a" && want != "" && vs == want { print (v6 ? $6 : $5) }
    '
}

_directorctl() {
    local cur
    _directorctl_complete
    # bash replaces only what follows the cursor word's last colon.
    if [[ $cur == *:* ]]; then
        local strip=${cur%"${cur##*:}"}
        COMPREPLY=("${COMPREPLY[@]#"$strip"}")
    fi
}

_directorctl_complete() {
    local i command="" position=0 cword
    _directorctl_split
    local -a words=("${_directorctl_words[@]}")
    cword=$((${#words[@]} - 1))
    cur=${words[cword]}
    local prev=${words[cword - 1]}
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
            --socket) ((i++)) ;;
            --socket=*) ;;
            -*) [[ -z $command ]] && command=ipvsadm ;;
            *)
                if [[ -z $command ]]; then
                    command=${words[i]}
                elif [[ ${words[i - 1]} != --timeout ]]; then
                    ((position++))
                fi
                ;;
        esac
    done
    if [[ $prev == --socket ]]; then
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        return
    fi
    case $command in
        "")
            mapfile -t COMPREPLY < <(compgen -W "$_directorctl_commands --socket --answer-timeout $_directorctl_ipvsadm_options" -- "$cur")
            ;;
        status)
            mapfile -t COMPREPLY < <(compgen -W "--json --summary --socket --answer-timeout" -- "$cur")
            ;;
        drain | disable | enable)
            if [[ $cur == -* && $command == drain ]]; then
                mapfile -t COMPREPLY < <(compgen -W "--wait --timeout --socket" -- "$cur")
            elif [[ $cur == -* ]]; then
                mapfile -t COMPREPLY < <(compgen -W "--socket" -- "$cur")
            elif [[ $prev == --timeout ]]; then
                COMPREPLY=()
            elif ((position == 0)); then
                mapfile -t COMPREPLY < <(compgen -W "$(_directorctl_table)" -- "$cur")
            elif ((position == 1)); then
                local service
                for ((i = 1; i < cword; i++)); do
                    case ${words[i]} in tcp:* | udp:* | sctp:* | fwm:*) service=${words[i]} ;; esac
                done
                mapfile -t COMPREPLY < <(compgen -W "$(_directorctl_table "$service")" -- "$cur")
            fi
            ;;
        check-config | import-keepalived)
            if [[ $cur == -* ]]; then
                mapfile -t COMPREPLY < <(compgen -W "--socket" -- "$cur")
            else
                mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            fi
            ;;
        ipvsadm)
            mapfile -t COMPREPLY < <(compgen -W "--socket $_directorctl_ipvsadm_options" -- "$cur")
            ;;
    esac
}

complete -o default -F _directorctl directorctl
