# Drives an interactive zsh (zsh -f -i, compinit on docs/completion) through a
# pseudo-terminal: types a line and TAB, and prints each match the completion
# system gives, one a line, as zsh would insert it (quoted).
# compadd is wrapped to print what the real compadd matched against the
# typed prefix (the zsh-capture-completion technique).
# $1: the completion directory, $2: a file of -Sn output the stand-in
# directorctl prints, $3: the line typed before TAB.
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PROMPT= ; unsetopt zle_bracketed_paste 2>/dev/null; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z "directorctl() { cat $2 }"
zpty -w z 'compadd() { if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi; typeset -a __hits; builtin compadd -A __hits "$@"; local h; for h in $__hits; do print -r -- "<hit>$h"; done; }'
zpty -w z "zstyle ':completion:*' list-grouped false"
zpty -w z '_zc_end() { print -r -- "<end>"; }'
zpty -w z 'print -r -- "<ready>"'
local line
while zpty -r z line; do [[ $line == *'<ready>'* && $line != *print* ]] && break; done
# _main_complete runs comppostfuncs once the completion is over (and then
# empties it): the end of the matches, whatever their number.
zpty -w z 'comppostfuncs=(_zc_end)'
zpty -w -n z "$3"$'\t'
while zpty -r z line; do
  [[ $line == *'<end>'* && $line != *print* ]] && break
  [[ $line == *'<hit>'* ]] && print -r -- "${${line##*<hit>}%%$'\r'*}"
done
zpty -d z
