#!/bin/sh
# Count how often each word occurs in every text of a falconeri datum.
#
# The falconeri worker downloads a datum's input files to
# $FALCONERI_PFS/<repo>/<path>, runs this script, then uploads whatever it
# finds under $FALCONERI_PFS/out/. This script reads every file under
# $FALCONERI_PFS/texts/ (one file, or a whole directory of them, depending on
# the glob) and writes, for each input texts/<dir>/<name>.txt, the file
# out/<dir>/<name>.counts.txt (for a top-level text simply out/<name>.counts.txt;
# a name without .txt keeps its whole name).
#
# Output format: one line per distinct word, "word count", with a single space
# between them, sorted by count (largest first), then by word (byte order).
#
# What counts as a word (deliberately simple, so the result is the same with
# any POSIX tr, sed, sort and awk, including busybox):
#   1. Upper-case ASCII letters are folded to lower case.
#   2. Every run of characters other than a-z and the apostrophe (') ends a
#      word. Digits, hyphens and any non-ASCII byte are therefore separators:
#      "well-known" is two words, "1984" is none.
#   3. Apostrophes are trimmed from both ends of a word, so quoted 'words' and
#      plural possessives (walkers') lose them, while "don't" and "fox's" keep
#      theirs. A run of nothing but apostrophes is not a word.
#
# Everything runs with LC_ALL=C so that ranges and sorting are byte-wise and
# the output does not depend on the machine's locale.
#
# Usage: FALCONERI_PFS=/path/to/pfs sh count-words.sh   (default: /pfs)
# Prints one summary line per text on stdout; exits non-zero if it finds no
# input at all.

set -eu

LC_ALL=C
export LC_ALL

pfs=${FALCONERI_PFS:-/pfs}
texts=$pfs/texts
out=$pfs/out

if [ ! -d "$texts" ]; then
    echo "count-words: no input directory $texts" >&2
    exit 1
fi

files=$(find "$texts" -type f | sort)
if [ -z "$files" ]; then
    echo "count-words: no files under $texts" >&2
    exit 1
fi

# Writes the "word count" lines for one file to stdout.
count_words() {
    # ASCII only, on purpose (see the word rule above).
    # shellcheck disable=SC2018,SC2019
    tr 'A-Z' 'a-z' <"$1" |
        tr -cs "a-z'" '\n' |
        sed -e "s/^'*//" -e "s/'*\$//" -e '/^$/d' |
        sort |
        uniq -c |
        awk '{ print $2, $1 }' |
        sort -k2,2nr -k1,1
}

printf '%s\n' "$files" | while IFS= read -r file; do
    rel=${file#"$texts"/}
    name=${rel##*/}
    case $rel in
        */*) subdir=${rel%/*}/ ;;
        *) subdir= ;;
    esac
    dest_rel=$subdir${name%.txt}.counts.txt
    dest=$out/$dest_rel

    mkdir -p "$(dirname "$dest")"
    # Write under a temporary name first, so a failure never leaves a
    # half-written result that looks complete.
    count_words "$file" >"$dest.tmp"
    mv "$dest.tmp" "$dest"

    summary=$(awk '{ total += $2 } END { printf "%d words, %d distinct", total, NR }' "$dest")
    echo "texts/$rel: $summary -> out/$dest_rel"
done
