#!/bin/bash
# Randomised differential test: one random sequence of writes, zero writes
# (with and without unmap), discards, compressed writes and internal snapshot
# operations (create/apply/delete) is applied with kiln-io/kiln-img to one
# copy and qemu-io/qemu-img to another, on images with different cluster
# sizes, with and without a backing file and with extended L2 entries. After
# every batch both copies must read the same (qemu-img compare and kiln-img
# compare) and map the same: data/zero/allocation per range, host offsets
# ignored. The seed is printed; KILN_DIFF_SEED=<n> replays a run,
# KILN_DIFF_BATCHES sets the batches per configuration.
source "$KILN_INTEROP_LIB"

seed=${KILN_DIFF_SEED:-$(( (RANDOM << 15) | RANDOM ))}
batches=${KILN_DIFF_BATCHES:-6}
echo "seed $seed (replay with KILN_DIFF_SEED=$seed), $batches batches per configuration"
RANDOM=$seed

size=$((16 << 20))
rand() { echo $(( ((RANDOM << 15) | RANDOM) % $1 )); }

# The guest-visible classification of qemu-img/kiln-img map --output=json:
# one line per run of equal (depth, present, zero, data), offsets dropped.
classify() {
  jq -r '.[] | "\(.start) \(.length) \(.depth) \(.present) \(.zero) \(.data)"' |
    awk '{ key = $3 " " $4 " " $5 " " $6
           if (key == last && $1 == end) { end += $2; next }
           if (last != "") print start, end, last
           start = $1; end = $1 + $2; last = key }
         END { if (last != "") print start, end, last }'
}

# A random request on an image with cluster size $1, as a qemu-io command.
random_request() {
  local cluster=$1 kind offset length
  kind=$(rand 100)
  if (( kind < 8 )); then
    offset=$(( $(rand $((size / cluster))) * cluster ))
    echo "write -c -P $((1 + $(rand 255))) $offset $cluster"
    return
  fi
  # Small requests, sometimes several clusters; half of them cluster aligned.
  length=$(( (1 + $(rand $(( (RANDOM % 4 == 0 ? 4 * cluster : cluster) / 512 )))) * 512 ))
  offset=$(( $(rand $(( (size - length) / 512 + 1 ))) * 512 ))
  if (( RANDOM % 2 )); then
    offset=$(( offset / cluster * cluster ))
    length=$(( (length + cluster - 1) / cluster * cluster ))
    (( offset + length > size )) && length=$(( size - offset ))
  fi
  if (( kind < 50 )); then
    echo "write -P $((1 + $(rand 255))) $offset $length"
  elif (( kind < 65 )); then
    echo "write -z $offset $length"
  elif (( kind < 80 )); then
    echo "write -z -u $offset $length"
  else
    echo "discard $offset $length"
  fi
}

run_config() {
  local name=$1 options=$2 cluster=$3 backing=$4
  local dir=$TEST_DIR/$name
  mkdir -p "$dir"
  local k=$dir/k.qcow2 q=$dir/q.qcow2 log=$dir/ops.log
  local -a snapshots=()
  local snapshot_count=0 batch
  if [ "$backing" == yes ]; then
    qemu-img create -q -f qcow2 -o cluster_size=65536 "$dir/base.qcow2" $size
    qemu-io -f qcow2 -c "write -P 0xbb 0 3M" -c "write -P 0xcc 5M 1M" -c "write -z 6M 1M" -c "write -P 0xdd 9M 2M" \
      "$dir/base.qcow2" >/dev/null
    options="$options,backing_file=$dir/base.qcow2,backing_fmt=qcow2"
  fi
  "$KILN_IMG" create -q -f qcow2 -o "$options" "$k" $size
  qemu-img create -q -f qcow2 -o "$options" "$q" $size
  : >"$log"
  for ((batch = 0; batch < batches; batch++)); do
    local choice
    choice=$(rand 100)
    # Without snapshots, apply/delete turn into create.
    (( ${#snapshots[@]} == 0 && choice >= 85 )) && choice=80
    if (( choice < 70 )); then
      local -a commands=() kiln_args=() qemu_args=()
      local n
      n=$((1 + $(rand 12)))
      for ((i = 0; i < n; i++)); do commands+=("$(random_request "$cluster")"); done
      for c in "${commands[@]}"; do kiln_args+=(-c "$c"); qemu_args+=(-c "$c"); echo "$c" >>"$log"; done
      local kiln_out qemu_out
      # Everything but the timing lines must match.
      kiln_out=$("$KILN_IO" -d unmap -f qcow2 "${kiln_args[@]}" "$k" 2>&1 | grep -v ' ops; ' | mask_tool_names || true)
      qemu_out=$(qemu-io -d unmap -f qcow2 "${qemu_args[@]}" "$q" 2>&1 | grep -v ' ops; ' | mask_tool_names || true)
      expect_equal "$name batch $batch: tool output" "$qemu_out" "$kiln_out"
    elif (( choice < 85 )); then
      local snap=snap$((snapshot_count++))
      echo "snapshot -c $snap" >>"$log"
      check "$name batch $batch: kiln-img snapshot -c" "$KILN_IMG" snapshot -c "$snap" "$k"
      qemu-img snapshot -c "$snap" "$q"
      snapshots+=("$snap")
    elif (( choice < 94 )); then
      local snap=${snapshots[$(rand ${#snapshots[@]})]}
      echo "snapshot -a $snap" >>"$log"
      check "$name batch $batch: kiln-img snapshot -a" "$KILN_IMG" snapshot -a "$snap" "$k"
      qemu-img snapshot -a "$snap" "$q"
    else
      local index
      index=$(rand ${#snapshots[@]})
      local snap=${snapshots[$index]}
      echo "snapshot -d $snap" >>"$log"
      check "$name batch $batch: kiln-img snapshot -d" "$KILN_IMG" snapshot -d "$snap" "$k"
      qemu-img snapshot -d "$snap" "$q"
      snapshots=("${snapshots[@]:0:index}" "${snapshots[@]:index+1}")
    fi
    local before=$failures
    check "$name batch $batch: qemu-img compare" qemu-img compare -q -f qcow2 -F qcow2 "$k" "$q"
    check "$name batch $batch: kiln-img compare" "$KILN_IMG" compare -q -f qcow2 -F qcow2 "$k" "$q"
    expect_equal "$name batch $batch: map classification" \
      "$(qemu-img map --output=json -f qcow2 "$q" | classify)" \
      "$("$KILN_IMG" map --output=json -f qcow2 "$k" | classify)"
    expect_equal "$name batch $batch: qemu-img map of the kiln copy" \
      "$(qemu-img map --output=json -f qcow2 "$q" | classify)" \
      "$(qemu-img map --output=json -f qcow2 "$k" | classify)"
    local kcheck=0 qcheck=0
    qemu-img check -q "$k" >/dev/null 2>&1 || kcheck=$?
    "$KILN_IMG" check -q "$k" >/dev/null 2>&1 || qcheck=$?
    expect_equal "$name batch $batch: qemu-img check / kiln-img check of the kiln copy" "0 0" "$kcheck $qcheck"
    expect_equal "$name batch $batch: snapshot lists" \
      "$(qemu-img snapshot -l "$q" | awk 'NR > 2 { print $2 }')" "$(qemu-img snapshot -l "$k" | awk 'NR > 2 { print $2 }')"
    if (( failures > before )); then
      echo "--- $name: requests so far (seed $seed):" >&2
      tail -20 "$log" >&2
      return
    fi
  done
}

run_config plain-4k "cluster_size=4096" 4096 no
run_config backing-64k "cluster_size=65536" 65536 yes
run_config extended-l2-64k "cluster_size=65536,extended_l2=on" 65536 no
run_config extended-l2-backing-32k "cluster_size=32768,extended_l2=on" 32768 yes
run_config plain-512-refcount8 "cluster_size=512,refcount_bits=8" 512 no

finish
