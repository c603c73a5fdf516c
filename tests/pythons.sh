#!/bin/sh
# Which Pythons `make run` and `make test` use (issue 21).
#
#   tests/pythons.sh primary            the interpreter for .venv: the newest python3.X on PATH
#                                       of the supported versions
#   tests/pythons.sh check PY           PY's version, or why it cannot make our venv
#   tests/pythons.sh others PRIMARY     "VERSION PATH" for each other supported version found
#   tests/pythons.sh quick PRIMARY NOTE the quick suite (tests/quick) on each of `others`, each
#                                       in its own .venv-3.X; one summary line per Python, the
#                                       first "python <PRIMARY's version>: NOTE"
#
# The supported versions are pyproject's "Programming Language :: Python :: 3.X" classifiers.
# `others` looks on PATH first (python3.X), then in pyenv's versions (newest patch release),
# because pyenv puts only its global version's commands on PATH. OTHER_PYTHONS chooses:
# unset or "auto" = every other supported version found; "none" = no other; else a list of
# versions (3.12) or interpreter paths, separated by spaces or commas, each of which must exist.
# QUICK_TIMEOUT (seconds, default 150) bounds each quick suite; INT first, so that the tests'
# fixtures still kill the nodes they started.
set -u

supported() {
	sed -n 's/^ *"Programming Language :: Python :: \(3\.[0-9][0-9]*\)",*$/\1/p' pyproject.toml |
		sort -t. -k2,2nr
}

# The X.Y.Z of interpreter $1 if it runs and can make a venv (Debian ships ensurepip apart,
# in python3.X-venv); nothing otherwise. A pyenv shim for a version that is not selected
# exists on PATH but fails to run, so existing is not enough.
probe() {
	"$1" -c 'import ensurepip, sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null
}

minor_of() { echo "$1" | cut -d. -f1,2; }

is_supported() { supported | grep -qx "$1"; }

# "VERSION PATH" of a python$1 (a minor version, 3.12) on PATH, else in pyenv; nothing if none.
find_minor() {
	if command -v "python$1" >/dev/null 2>&1; then
		v=$(probe "python$1")
		if [ "$(minor_of "$v")" = "$1" ]; then
			echo "$v $(command -v "python$1")"
			return
		fi
	fi
	command -v pyenv >/dev/null 2>&1 || return 0
	root=$(pyenv root 2>/dev/null) || return 0
	for dir in $(ls -d "$root/versions/$1".[0-9]* 2>/dev/null | sort -rV); do
		case "$dir" in *[!0-9.]) continue ;; esac # not 3.13.0t (free-threaded) and the like
		v=$(probe "$dir/bin/python$1")
		if [ "$(minor_of "$v")" = "$1" ]; then
			echo "$v $dir/bin/python$1"
			return
		fi
	done
}

cmd_primary() {
	for m in $(supported); do
		command -v "python$m" >/dev/null 2>&1 || continue
		v=$(probe "python$m")
		if [ "$(minor_of "$v")" = "$m" ]; then
			command -v "python$m"
			return 0
		fi
		if "python$m" -c '' 2>/dev/null; then
			echo "python$m cannot make a venv (no ensurepip: install python$m-venv); trying older" >&2
		fi
	done
	echo "need one of: $(supported | sed 's/^/python/' | tr '\n' ' ')on PATH (or set PYTHON=...)" >&2
	return 2
}

cmd_check() {
	v=$(probe "$1")
	if [ -z "$v" ]; then
		echo "$1: does not run or cannot make a venv (no ensurepip)" >&2
		return 2
	fi
	if ! is_supported "$(minor_of "$v")"; then
		echo "$1 is Python $v; supported: $(supported | sort -V | tr '\n' ' ')(pyproject.toml)" >&2
		return 2
	fi
	echo "$v"
}

cmd_others() {
	primary_minor=$(minor_of "$(probe "$1")")
	choice=${OTHER_PYTHONS:-auto}
	case "$choice" in
	none) return 0 ;;
	auto)
		for m in $(supported | sort -V); do
			[ "$m" = "$primary_minor" ] || find_minor "$m"
		done
		return 0
		;;
	esac
	status=0
	for want in $(echo "$choice" | tr ',' ' '); do
		case "$want" in
		*/*)
			if ! v=$(cmd_check "$want"); then # it says why
				status=2
				continue
			fi
			found="$v $want"
			;;
		*)
			if is_supported "$want"; then
				found=$(find_minor "$want")
			else
				echo "OTHER_PYTHONS: $want is not a supported version ($(supported | sort -V | tr '\n' ' '| sed 's/ $//'))" >&2
				status=2
				continue
			fi
			;;
		esac
		if [ -z "$found" ]; then
			echo "OTHER_PYTHONS: python $want not found (PATH, pyenv)" >&2
			status=2
		else
			echo "$found"
		fi
	done
	return $status
}

# The quick suite on interpreter $2 (version $1) in .venv-X.Y; appends its summary line to $3.
quick_one() {
	version=$1 py=$2 summary=$3
	venv=.venv-$(minor_of "$version")
	began=$(date +%s)
	# Made afresh when pyproject changes or the venv was made by another interpreter.
	if [ ! -f "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ] ||
		[ "$(cat "$venv/.installed")" != "$version $py" ]; then
		echo "python $version: making $venv with $py"
		# Only what tests/quick needs, with the bounds of pyproject's dev extra.
		if ! "$py" -m venv --clear "$venv" ||
			! "$venv/bin/python" -m pip install -q -e . \
				"pytest>=8.0" "pytest-timeout>=2.2" "hypothesis>=6.90" >"$venv/install.log" 2>&1; then
			tail -n 20 "$venv/install.log" 2>/dev/null
			echo "python $version: FAILED to install into $venv (log: $venv/install.log)" | tee -a "$summary"
			return 1
		fi
		echo "$version $py" >"$venv/.installed"
	fi
	installed=$(date +%s)
	echo "python $version: quick suite (tests/quick) in $venv"
	# A DeprecationWarning from our code is an error, also while collecting. As an ini option
	# (-o) the module is a regular expression matched at the start of the module's name, so
	# it covers every hanzo_tasks.* module; the -W option would match hanzo_tasks alone.
	${TIMEOUT:+$TIMEOUT -s INT -k 30 ${QUICK_TIMEOUT:-150}} "$venv/bin/python" -m pytest -q \
		-p no:cacheprovider -o "filterwarnings=error::DeprecationWarning:hanzo_tasks" \
		--timeout 90 tests/quick >"$venv/quick.log" 2>&1
	rc=$?
	ended=$(date +%s)
	tests=$(tail -n 1 "$venv/quick.log" | grep -o '[0-9]* passed' | cut -d' ' -f1)
	times="$((ended - installed)) s; venv and install $((installed - began)) s"
	if [ "$rc" -eq 0 ]; then
		echo "python $version: quick suite passed (${tests:-?} tests, $times)" | tee -a "$summary"
		return 0
	fi
	tail -n 40 "$venv/quick.log"
	[ "$rc" -eq 124 ] && echo "(stopped after QUICK_TIMEOUT=${QUICK_TIMEOUT:-150} s)"
	echo "python $version: quick suite FAILED (exit $rc, $times; log: $venv/quick.log)" | tee -a "$summary"
	return 1
}

cmd_quick() {
	primary_version=$(probe "$1")
	note=$2
	TIMEOUT=$(command -v timeout || true)
	others=$(cmd_others "$1") || return 2
	summary=$(mktemp)
	trap 'rm -f "$summary"' EXIT
	echo "$others" | while read -r version py; do
		[ -z "$version" ] || quick_one "$version" "$py" "$summary" </dev/null
	done
	echo
	echo "python $primary_version: $note"
	cat "$summary"
	if grep -q "FAILED" "$summary"; then
		return 1
	fi
	if [ ! -s "$summary" ]; then
		if [ "${OTHER_PYTHONS:-auto}" = none ]; then
			echo "no other Python tested (OTHER_PYTHONS=none)"
		else
			echo "only Python $primary_version was found: no other supported Python" \
				"($(supported | sort -V | tr '\n' ' ' | sed 's/ $//')) on PATH or in pyenv, so none other was tested"
		fi
	fi
	return 0
}

cd "$(dirname "$0")/.." || exit 2
command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
primary) cmd_primary ;;
check) cmd_check "$1" ;;
others) cmd_others "$1" ;;
quick) cmd_quick "$1" "${2:-full suite not run here}" ;;
*)
	sed -n '2,10p' "$0" >&2
	exit 2
	;;
esac
