; 16550A UART on COM1: scratch, LCR/DLAB divisor latch, LSR, IIR/FCR, the
; THR-empty interrupt identification, loopback (MSR follows MCR, data comes
; back through the receive FIFO), FIFO overrun and the non-FIFO receive
; register. Interrupts stay disabled at the CPU; only IIR is examined.
%include "guest.inc"

%define REG(n) (COM1 + n)

%macro OUTB 2
    mov dx, %1
    mov al, %2
    out dx, al
%endmacro
%macro INB 1
    mov dx, %1
    in al, dx
    movzx eax, al
%endmacro

test_main:
    ; Scratch register keeps any value.
    OUTB REG(7), 0x5a
    INB REG(7)
    CHECK_EQ eax, 0x5a, "scratch 5a"
    OUTB REG(7), 0xa5
    INB REG(7)
    CHECK_EQ eax, 0xa5, "scratch a5"

    ; Divisor latch behind DLAB; LCR reads back (nothing printed while DLAB is set).
    OUTB REG(3), 0x83
    OUTB REG(0), 0x0c
    OUTB REG(1), 0x00
    INB REG(0)
    mov [dll], eax
    INB REG(1)
    mov [dlm], eax
    INB REG(3)
    mov [lcr_dlab], eax
    OUTB REG(3), 0x03
    CHECK_EQ [dll], 0x0c, "dll"
    CHECK_EQ [dlm], 0x00, "dlm"
    CHECK_EQ [lcr_dlab], 0x83, "lcr dlab"
    INB REG(3)
    CHECK_EQ eax, 0x03, "lcr 8n1"

    ; Transmitter idle, no data.
    INB REG(5)
    and eax, 0x61
    CHECK_EQ eax, 0x60, "lsr thre temt, no dr"

    ; FIFO enabled (serial_init wrote 0xc7): IIR bits 7-6 set, nothing pending.
    INB REG(2)
    CHECK_EQ eax, 0xc1, "iir idle"

    ; Enabling the THR-empty interrupt with THR empty makes it pending;
    ; reading IIR reports it once (printing would transmit and raise it again).
    OUTB REG(1), 0x02
    INB REG(1)
    mov [ier], eax
    INB REG(2)
    mov [iir_thr], eax
    INB REG(2)
    mov [iir_thr_again], eax
    OUTB REG(1), 0x00
    CHECK_EQ [ier], 0x02, "ier"
    CHECK_EQ [iir_thr], 0xc2, "iir thr empty"
    CHECK_EQ [iir_thr_again], 0xc1, "iir after read"

    ; Loopback with every modem output on: CTS, DSR, RI, DCD all read 1.
    OUTB REG(4), 0x1f
    INB REG(6)
    mov [msr_all], eax
    OUTB REG(4), 0x10
    INB REG(6)
    mov [msr_none], eax
    ; RTS only -> CTS only; DTR only -> DSR only.
    OUTB REG(4), 0x12
    INB REG(6)
    mov [msr_rts], eax
    OUTB REG(4), 0x11
    INB REG(6)
    mov [msr_dtr], eax

    ; Loopback data through a trigger-level-1 FIFO with the receive interrupt enabled.
    OUTB REG(2), 0x07
    OUTB REG(1), 0x01
    OUTB REG(0), 'K'
    INB REG(5)
    mov [lsr_after_send], eax
    INB REG(2)
    mov [iir_rx], eax
    OUTB REG(0), 'i'
    OUTB REG(0), 'l'
    INB REG(0)
    mov [rx1], eax
    INB REG(0)
    mov [rx2], eax
    INB REG(0)
    mov [rx3], eax
    INB REG(5)
    mov [lsr_empty], eax
    INB REG(2)
    mov [iir_empty], eax
    OUTB REG(1), 0x00

    ; Seventeen characters overflow the 16-byte FIFO: OE, cleared by reading LSR.
    mov ecx, 17
.fill:
    OUTB REG(0), cl
    loop .fill
    INB REG(5)
    mov [lsr_overrun], eax
    INB REG(5)
    mov [lsr_after_read], eax
    OUTB REG(2), 0x07                  ; clear the receive FIFO
    INB REG(5)
    mov [lsr_cleared], eax

    ; Without FIFO a second character overwrites the unread first one.
    OUTB REG(2), 0x00
    OUTB REG(0), 0x31
    OUTB REG(0), 0x32
    INB REG(5)
    mov [lsr_nofifo], eax
    INB REG(0)
    mov [rx_nofifo], eax
    INB REG(2)
    mov [iir_nofifo], eax

    ; Back to normal operation before printing anything.
    OUTB REG(4), 0x03
    OUTB REG(2), 0xc7

    mov eax, [msr_all]
    and eax, 0xf0
    CHECK_EQ eax, 0xf0, "loop msr all"
    mov eax, [msr_none]
    and eax, 0xf0
    CHECK_EQ eax, 0x00, "loop msr none"
    mov eax, [msr_rts]
    and eax, 0xf0
    CHECK_EQ eax, 0x10, "loop msr rts->cts"
    mov eax, [msr_dtr]
    and eax, 0xf0
    CHECK_EQ eax, 0x20, "loop msr dtr->dsr"
    mov eax, [lsr_after_send]
    and eax, 0x61
    CHECK_EQ eax, 0x61, "loop lsr dr"
    ; Receive data (0xc4) or, once four character times passed, the character
    ; timeout (0xcc): the same request, timing dependent.
    mov eax, [iir_rx]
    and eax, 0xf7
    CHECK_EQ eax, 0xc4, "loop iir rx data or timeout"
    CHECK_EQ [rx1], 'K', "loop rx1"
    CHECK_EQ [rx2], 'i', "loop rx2"
    CHECK_EQ [rx3], 'l', "loop rx3"
    mov eax, [lsr_empty]
    and eax, 0x01
    CHECK_EQ eax, 0, "loop lsr drained"
    CHECK_EQ [iir_empty], 0xc1, "loop iir drained"
    mov eax, [lsr_overrun]
    and eax, 0x03
    CHECK_EQ eax, 0x03, "fifo overrun"
    mov eax, [lsr_after_read]
    and eax, 0x03
    CHECK_EQ eax, 0x01, "overrun cleared by read"
    mov eax, [lsr_cleared]
    and eax, 0x01
    CHECK_EQ eax, 0, "fifo reset drops data"
    mov eax, [lsr_nofifo]
    and eax, 0x03
    CHECK_EQ eax, 0x03, "no fifo overrun"
    CHECK_EQ [rx_nofifo], 0x32, "no fifo keeps last"
    CHECK_EQ [iir_nofifo], 0x01, "no fifo iir"
    ret

align 4
dll: dd 0
dlm: dd 0
lcr_dlab: dd 0
ier: dd 0
iir_thr: dd 0
iir_thr_again: dd 0
msr_all: dd 0
msr_none: dd 0
msr_rts: dd 0
msr_dtr: dd 0
lsr_after_send: dd 0
iir_rx: dd 0
rx1: dd 0
rx2: dd 0
rx3: dd 0
lsr_empty: dd 0
iir_empty: dd 0
lsr_overrun: dd 0
lsr_after_read: dd 0
lsr_cleared: dd 0
lsr_nofifo: dd 0
rx_nofifo: dd 0
iir_nofifo: dd 0

%include "guest_end.inc"
