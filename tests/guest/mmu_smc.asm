; Self-modifying code: a store patches the immediate of the next instruction in
; the same block, of an instruction in a later (already executed) block, and of
; a loop body on every iteration; the patched instructions run in their new form.
%include "guest.inc"

test_main:
    ; The same block: the patched instruction follows the store directly.
    mov dword [same_block + 1], 0x11111142
same_block:
    mov eax, 0x11111111
    CHECK_EQ eax, 0x11111142, "same block"

    ; A byte in the middle of a later instruction of the same block.
    mov byte [same_block2 + 3], 0x99
    nop
    nop
same_block2:
    mov eax, 0x44332211
    CHECK_EQ eax, 0x44992211, "same block, later insn"

    ; A block that already ran (and is translated) is rewritten, then called again.
    call func
    mov ebx, eax
    mov byte [func + 1], 2
    call func
    CHECK_EQ ebx, 1, "before patch"
    CHECK_EQ eax, 2, "after patch"

    ; A loop whose body is rewritten on every iteration: sum of 1..5.
    xor edx, edx
    mov ecx, 1
smc_loop:
    mov [loop_body + 1], ecx
loop_body:
    mov eax, 0
    add edx, eax
    inc ecx
    cmp ecx, 5
    jbe smc_loop
    CHECK_EQ edx, 15, "patched loop sum"
    ret

func:
    mov eax, 1
    ret

%include "guest_end.inc"
