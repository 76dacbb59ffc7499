; String and wide port I/O against the COM1 UART: REP OUTSB to the transmit
; register (with a segment override), loopback through the receive FIFO with
; REP INSB forwards and REP OUTSB backwards (DF=1), and 16-bit IN/OUT split
; over two 8-bit registers (LCR and MCR) as the ISA bus does.
%include "guest.inc"

test_main:
    ; Print with FS: REP OUTSB (FS is flat too).
    mov esi, text
    mov ecx, text_end - text
    mov dx, COM1
    fs rep outsb
    CHECK_EQ ecx, 0, "outsb count"

    ; Loopback: send "ABCD", read it back with REP INSB.
    mov dx, COM1 + 4
    mov al, 0x10
    out dx, al
    mov esi, abcd
    mov ecx, 4
    mov dx, COM1
    rep outsb
    mov edi, buffer
    mov ecx, 4
    rep insb
    mov [edi_after], edi
    ; Backwards: STD, REP OUTSB from the last byte sends "ZYXW".
    std
    mov esi, wxyz + 3
    mov ecx, 4
    rep outsb
    cld
    mov edi, buffer + 4
    mov ecx, 4
    rep insb
    mov [esi_after], esi
    mov dx, COM1 + 4
    mov al, 0x03
    out dx, al                         ; loopback off before printing

    mov eax, [buffer]
    CHECK_EQ eax, 'ABCD', "insb forward"
    mov eax, [buffer + 4]
    CHECK_EQ eax, 'ZYXW', "outsb backward"
    mov eax, [edi_after]
    sub eax, buffer
    CHECK_EQ eax, 4, "edi advanced"
    mov eax, wxyz - 1
    sub eax, [esi_after]
    CHECK_EQ eax, 0, "esi went down"

    ; 16-bit accesses cover LCR (0x3fb) and MCR (0x3fc).
    mov dx, COM1 + 3
    in ax, dx
    movzx eax, ax
    CHECK_EQ eax, 0x0303, "in ax lcr/mcr"
    mov ax, 0x0b03
    out dx, ax
    mov dx, COM1 + 4
    in al, dx
    movzx eax, al
    CHECK_EQ eax, 0x0b, "out ax reached mcr"
    mov al, 0x03
    out dx, al
    ret

text: db "rep outsb ok", 10
text_end:
abcd: db "ABCD"
wxyz: db "WXYZ"
align 4
buffer: times 8 db 0
edi_after: dd 0
esi_after: dd 0

%include "guest_end.inc"
