; MC146818 RTC and CMOS (run with -m 64M): status registers, the memory-size
; bytes, a plausible BCD date, setting the time through register B's SET bit,
; and reading it back in binary and 12-hour formats.
%include "guest.inc"

%macro CMOS_READ 1
    mov al, %1
    out 0x70, al
    in al, 0x71
    movzx eax, al
%endmacro
%macro CMOS_WRITE 2
    mov al, %1
    out 0x70, al
    mov al, %2
    out 0x71, al
%endmacro
; Sets EAX to 1 when the low byte of EAX is a BCD number in [lo, hi], else 0.
%macro BCD_IN_RANGE 2
    push ebx
    mov ebx, eax
    and ebx, 0x0f
    cmp ebx, 9
    ja %%bad
    cmp eax, %1
    jb %%bad
    cmp eax, %2
    ja %%bad
    mov eax, 1
    jmp %%done
%%bad:
    xor eax, eax
%%done:
    pop ebx
%endmacro

test_main:
    CMOS_READ 0x0d
    CHECK_EQ eax, 0x80, "reg d valid"
    CMOS_READ 0x0b
    and eax, 0x7f
    CHECK_EQ eax, 0x02, "reg b bcd 24h"
    CMOS_READ 0x0a
    and eax, 0x7f
    CHECK_EQ eax, 0x26, "reg a"

    CMOS_READ 0x15
    mov ebx, eax
    CMOS_READ 0x16
    shl eax, 8
    or eax, ebx
    CHECK_EQ eax, 640, "base memory"
    CMOS_READ 0x30
    mov ebx, eax
    CMOS_READ 0x31
    shl eax, 8
    or eax, ebx
    CHECK_EQ eax, 63 * 1024, "extended memory"
    CMOS_READ 0x34
    mov ebx, eax
    CMOS_READ 0x35
    shl eax, 8
    or eax, ebx
    CHECK_EQ eax, (64 - 16) * 16, "memory above 16M"

    ; Wait until no update is in progress, then read a date.
.uip:
    CMOS_READ 0x0a
    test al, 0x80
    jnz .uip
    CMOS_READ 0x00
    BCD_IN_RANGE 0x00, 0x59
    CHECK_EQ eax, 1, "seconds bcd"
    CMOS_READ 0x02
    BCD_IN_RANGE 0x00, 0x59
    CHECK_EQ eax, 1, "minutes bcd"
    CMOS_READ 0x04
    BCD_IN_RANGE 0x00, 0x23
    CHECK_EQ eax, 1, "hours bcd"
    CMOS_READ 0x07
    BCD_IN_RANGE 0x01, 0x31
    CHECK_EQ eax, 1, "day bcd"
    CMOS_READ 0x08
    BCD_IN_RANGE 0x01, 0x12
    CHECK_EQ eax, 1, "month bcd"
    CMOS_READ 0x32
    CHECK_EQ eax, 0x20, "century"

    ; Set 2024-06-15 12:34:56 with SET held.
    CMOS_WRITE 0x0b, 0x82
    CMOS_WRITE 0x00, 0x56
    CMOS_WRITE 0x02, 0x34
    CMOS_WRITE 0x04, 0x12
    CMOS_WRITE 0x07, 0x15
    CMOS_WRITE 0x08, 0x06
    CMOS_WRITE 0x09, 0x24
    CMOS_WRITE 0x32, 0x20
    CMOS_WRITE 0x0b, 0x02
    CMOS_READ 0x04
    CHECK_EQ eax, 0x12, "set hours"
    CMOS_READ 0x02
    CHECK_EQ eax, 0x34, "set minutes"
    CMOS_READ 0x07
    CHECK_EQ eax, 0x15, "set day"
    CMOS_READ 0x08
    CHECK_EQ eax, 0x06, "set month"
    CMOS_READ 0x09
    CHECK_EQ eax, 0x24, "set year"
    CMOS_READ 0x00
    sub eax, 0x56
    cmp eax, 2
    setb al
    movzx eax, al
    CHECK_EQ eax, 1, "set seconds running"

    ; Binary format, then 12-hour BCD (12:34 is 12 PM: 0x12 | 0x80).
    CMOS_WRITE 0x0b, 0x06
    CMOS_READ 0x04
    CHECK_EQ eax, 12, "binary hours"
    CMOS_READ 0x02
    CHECK_EQ eax, 34, "binary minutes"
    CMOS_WRITE 0x0b, 0x00
    CMOS_READ 0x04
    CHECK_EQ eax, 0x92, "12h hours"
    CMOS_WRITE 0x0b, 0x02
    ret

%include "guest_end.inc"
