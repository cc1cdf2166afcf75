#!/usr/bin/env bash
# Downloads, on a Debian 12 machine with network, the Debian packages that building sinkscope needs EXCEPT LibTorch
# (gRPC + grpc_cpp_plugin, protobuf + protoc, Abseil, spdlog/fmt, yaml-cpp, nlohmann-json, CLI11, prometheus-cpp,
# SQLite, OpenSSL, GoogleTest/GoogleMock, re2, c-ares and the shared libraries they need) as .deb files into
# .gpu-deps/, so deploy/gpu-check.sh can unpack them into a private prefix on an air-gapped GPU node that has a
# compiler, CMake and a pip torch but none of our -dev packages.
#
# Why a hand-made dependency walk instead of `apt-cache depends --recurse`: the plain recursive closure is ~40 MB and
# drags in libc6/libc6-dev/linux-libc-dev (the node has its own, and ours must never shadow them) and, through
# prometheus-cpp's push library -> libcurl4, Kerberos/LDAP/GnuTLS (~5 MB) that are never loaded: sinkscope links
# prometheus-cpp::core only. So the walk
#   - never includes (nor descends into) EXCLUDE: libraries every glibc Linux has, toolchain packages, sources;
#   - includes but does not descend into LEAF: packages whose files must exist (CMake's imported-target file checks,
#     FindCURL for prometheus-cpp's find_dependency(CURL)) but whose code is never loaded by sinkscope.
# Dangling -dev symlinks into excluded runtimes (libz.so -> libz.so.1.2.13) are repointed by gpu-check.sh to the
# node's own library.
#
# Idempotent: files already present with the right size and SHA-256 are kept, stale ones removed; prints the total.
# Usage: deploy/fetch-gpu-deps.sh [--list]   (--list: print the package set and exit, download nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.gpu-deps

ROOTS=(
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev libabsl-dev libre2-dev libc-ares-dev
  libssl-dev libspdlog-dev libfmt-dev prometheus-cpp-dev nlohmann-json3-dev libcli11-dev libyaml-cpp-dev
  libsqlite3-dev libgtest-dev libgmock-dev zlib1g-dev libcurl4-openssl-dev libcpp-httplib-dev
)
# Present on any glibc system (and must come from the node, matching its compiler and libc), or not needed to build.
# (pkgconf stays in: gRPC's Findre2.cmake requires pkg-config, which a bare node may lack.)
EXCLUDE=(
  libc6 libc6-dev libc-dev-bin linux-libc-dev libcrypt1 libcrypt-dev libnsl2 libnsl-dev libtirpc3 libtirpc-dev
  libtirpc-common rpcsvc-proto libgcc-s1 gcc-12-base libstdc++6 libstdc++-12-dev zlib1g libzstd1 liblzma5 libbz2-1.0
  debconf dpkg perl-base googletest catch2
)
# Included, not descended into (see the header): libcurl4's own closure is Kerberos/LDAP/GnuTLS.
LEAF=(libcurl4)

die() { echo "fetch-gpu-deps: $*" >&2; exit 1; }
command -v apt-cache >/dev/null || die "needs a Debian machine (apt-cache not found)"
grep -q 'VERSION_ID="12"' /etc/os-release 2>/dev/null || echo "fetch-gpu-deps: WARNING: not Debian 12; package versions may not match what the project was tested with" >&2

in_list() { local x=$1; shift; local y; for y in "$@"; do [[ $x == "$y" ]] && return 0; done; return 1; }

# Dependency walk: breadth first over Depends/PreDepends (first alternative of an or-group, virtual packages resolved
# to their first provider), starting at ROOTS.
declare -A seen=()
frontier=()
for r in "${ROOTS[@]}"; do
  apt-cache show --no-all-versions "$r" >/dev/null 2>&1 || die "package $r unknown to apt (run 'apt-get update' first)"
  seen[$r]=1; frontier+=("$r")
done
while [[ ${#frontier[@]} -gt 0 ]]; do
  expand=()
  for p in "${frontier[@]}"; do in_list "$p" "${LEAF[@]}" || expand+=("$p"); done
  frontier=()
  [[ ${#expand[@]} -eq 0 ]] && break
  # awk: for each "pkg" block, print the first alternative of each dependency group; for a <virtual> print the first
  # provider listed under it.
  while read -r dep; do
    [[ -z $dep ]] && continue
    dep=${dep%%:*}  # strip :any / :amd64 qualifiers
    in_list "$dep" "${EXCLUDE[@]}" && continue
    [[ -n ${seen[$dep]:-} ]] && continue
    seen[$dep]=1; frontier+=("$dep")
  done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
             "${expand[@]}" | awk '
      /^[^ ]/ { alt = 0; virt = 0; next }
      /^ *\|(Pre)?Depends:/ { if (!alt) { name = $2; if (name ~ /^</) virt = 1; else print name }; alt = 1; next }
      /^ *(Pre)?Depends:/ { if (!alt) { name = $2; if (name ~ /^</) virt = 1; else print name }; alt = 0; next }
      /^    [^ ]/ { if (virt) { print $1; virt = 0 }; next }
      { next }')
done
PKGS=($(printf '%s\n' "${!seen[@]}" | sort))

if [[ ${1:-} == "--list" ]]; then printf '%s\n' "${PKGS[@]}"; exit 0; fi

mkdir -p "$OUT"
# Exact file names, sizes and checksums of the candidate versions (no download yet). In an empty directory: apt
# prints nothing for files already present in the current one.
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
URIS=$(cd "$TMP" && apt-get download --print-uris "${PKGS[@]}" 2>/dev/null) || die "apt-get download --print-uris failed"
declare -A want=()
need=()
while read -r uri file size sum; do
  [[ -z ${file:-} ]] && continue
  want[$file]=1
  sum=${sum#SHA256:}
  if [[ -f $OUT/$file && $(stat -c %s "$OUT/$file") == "$size" ]] && echo "$sum  $OUT/$file" | sha256sum -c --quiet - >/dev/null 2>&1; then
    continue
  fi
  rm -f "$OUT/$file"
  need+=("$(basename "${file%%_*}")")
done <<< "$(tr -d "'" <<< "$URIS")"
[[ ${#want[@]} -eq ${#PKGS[@]} ]] || die "expected ${#PKGS[@]} files from apt-get download --print-uris, got ${#want[@]}"

if [[ ${#need[@]} -gt 0 ]]; then
  echo "fetch-gpu-deps: downloading ${#need[@]} of ${#PKGS[@]} packages"
  # APT::Sandbox::User=root: the _apt user cannot write into a root-owned work tree (apt would warn and fall back).
  (cd "$OUT" && apt-get download -q -o APT::Sandbox::User=root "${need[@]}" >/dev/null) || die "apt-get download failed"
fi
# Stale files from another package set or version.
for f in "$OUT"/*.deb; do
  [[ -n ${want[$(basename "$f")]:-} ]] || { echo "fetch-gpu-deps: removing stale $(basename "$f")"; rm -f "$f"; }
done
# Manifest: what gpu-check.sh unpacks, and a quick way to see what travelled.
(cd "$OUT" && sha256sum ./*.deb | sed 's# \./#  #' > SHA256SUMS)
printf '%s\n' "${PKGS[@]}" > "$OUT/PACKAGES"
total=$(du -cb "$OUT"/*.deb | tail -1 | cut -f1)
echo "fetch-gpu-deps: ${#PKGS[@]} packages in $OUT/, $(( (total + 524287) / 1048576 )) MiB total ($total bytes)"
if (( total > 50 * 1048576 )); then
  die "the set is over 50 MiB: the working tree plus carried files must stay under 64 MiB for the GPU machine"
fi
