; MC146818 register C flags without interrupts: the update-ended flag (once a
; second) appears while its interrupt is disabled, IRQF stays clear, and no
; periodic flag appears at rate 0. (The hardware also sets the periodic flag
; with PIE clear, Kiln too; qemu does not, so it is not checked here.)
%include "guest.inc"

%macro CMOS_READ 1
    mov al, %1
    out 0x70, al
    in al, 0x71
    movzx eax, al
%endmacro

; Polls register C until (C & mask) != 0 or ECX runs out; EAX = 1 if seen,
; EBX = the ORed C values (for the IRQF check).
%macro WAIT_FLAG 1
    xor ebx, ebx
    mov ecx, 200000000
%%poll:
    CMOS_READ 0x0c
    or ebx, eax
    test eax, %1
    jnz %%seen
    loop %%poll
    xor eax, eax
    jmp %%done
%%seen:
    mov eax, 1
%%done:
%endmacro

test_main:
    CMOS_READ 0x0b
    and eax, 0x70
    CHECK_EQ eax, 0, "no rtc interrupts enabled"
    CMOS_READ 0x0c                     ; clear
    WAIT_FLAG 0x10
    mov [uf_seen], eax
    mov [pf_c], ebx
    CHECK_EQ [uf_seen], 1, "update flag"
    mov eax, [pf_c]
    and eax, 0x80
    CHECK_EQ eax, 0, "irqf stays clear"
    ; Turn the periodic rate off: PF no longer appears (C read twice within far less than a second).
    mov al, 0x0a
    out 0x70, al
    mov al, 0x20
    out 0x71, al
    CMOS_READ 0x0c
    mov ecx, 1000
.spin:
    loop .spin
    CMOS_READ 0x0c
    and eax, 0x40
    CHECK_EQ eax, 0, "no periodic flag at rate 0"
    mov al, 0x0a
    out 0x70, al
    mov al, 0x26
    out 0x71, al
    ret

align 4
uf_seen: dd 0
pf_c: dd 0

%include "guest_end.inc"
