; Compute-bound guest snippets for the interpreter benchmark. Each is a
; System V function: rdi = 64 KiB scratch buffer; returns a checksum in eax.
; Assembled to flat binaries, one per snippet (selected with -DSNIPPET=n).
bits 64
default rel

%if SNIPPET == 0
; Integer loop: add/imul/xor/rotate, 20 M iterations.
  mov ecx, 20000000
  xor eax, eax
.loop:
  add eax, ecx
  imul eax, eax, 3
  xor eax, ecx
  ror eax, 3
  dec ecx
  jnz .loop
  ret
%elif SNIPPET == 1
; Sieve of Eratosthenes over 60000 bytes, 60 rounds; returns the prime count.
  mov r9d, 60
.round:
  xor ecx, ecx
.clear:
  mov byte [rdi + rcx], 1
  inc ecx
  cmp ecx, 60000
  jb .clear
  mov esi, 2
.outer:
  mov eax, esi
  imul eax, esi
  cmp eax, 60000
  jae .count
  cmp byte [rdi + rsi], 0
  je .next
.inner:
  mov byte [rdi + rax], 0
  add eax, esi
  cmp eax, 60000
  jb .inner
.next:
  inc esi
  jmp .outer
.count:
  xor eax, eax
  mov ecx, 2
.cnt:
  movzx edx, byte [rdi + rcx]
  add eax, edx
  inc ecx
  cmp ecx, 60000
  jb .cnt
  dec r9d
  jnz .round
  ret
%else
; Bitwise CRC-32 (reflected, poly 0xEDB88320) over 16 KiB, 40 rounds.
  mov r9d, 40
  mov eax, 0xffffffff
.round:
  xor ecx, ecx
.byte:
  movzx edx, byte [rdi + rcx]
  xor eax, edx
  mov r8d, 8
.bit:
  mov edx, eax
  shr eax, 1
  and edx, 1
  neg edx
  and edx, 0xedb88320
  xor eax, edx
  dec r8d
  jnz .bit
  inc ecx
  cmp ecx, 16384
  jb .byte
  dec r9d
  jnz .round
  not eax
  ret
%endif
