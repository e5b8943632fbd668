# shellcheck shell=bash
# Sourced by the launch scripts: CONFIG and WORKDIR as the caller meant them, made absolute before
# a script changes into the repository. A relative path is the caller's (a CONFIG found only in
# the repository, configs/demo.py run from elsewhere, is the repository's). A URL (gs://...) is
# refused: the run reads and writes with local file operations.

absolute_path() { # PATH
  if [[ $1 =~ ^[A-Za-z][A-Za-z0-9+.-]*:// ]]; then
    echo "error: $1 is a URL: jaxvrl reads and writes with local file operations; mount it" \
      "(gcsfuse, a Filestore or NFS mount) and pass the mounted path (docs/launch.md)" >&2
    return 2
  elif [[ $1 == /* ]]; then
    printf '%s\n' "$1"
  else
    printf '%s\n' "$PWD/${1#./}"
  fi
}

absolute_config() { # CONFIG[:ARG] REPO
  local path=$1 arg=
  if [[ $path =~ ^(.*\.py)(:.*)$ ]]; then
    path=${BASH_REMATCH[1]} arg=${BASH_REMATCH[2]}
  fi
  if [[ $path != /* && ! -e $path && -e $2/$path ]]; then
    path=$2/${path#./}
  fi
  printf '%s%s\n' "$(absolute_path "$path")" "$arg"
}
