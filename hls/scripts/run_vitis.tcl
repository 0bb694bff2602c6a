# Vitis HLS flow for one qsnn top function on the AMD Kria K26 part (xck26-sfvc784-2LV-c).
#
# Usage, from the hls/ folder (the vectors come from Python, the parameter set from
# src/qsnn_params.h or -D defines passed through QSNN_DEFS):
#   make build/layer.bin                                   # or: python -m qsnn_kernels.hls export layer --out build/layer.bin
#   vitis_hls -f scripts/run_vitis.tcl -tclargs layer all  # kind: gemm | lif | layer | net
#                                                          # steps: csim | csynth | cosim | all (default all)
#   QSNN_DEFS="-DQSNN_W_BITS=8 -DQSNN_S_BITS_IN=1" vitis_hls -f scripts/run_vitis.tcl -tclargs layer all
# csim and cosim run the same testbench as `make csim` and fail on a mismatch; csynth writes the
# latency / II / resource report to qsnn_<kind>_prj/solution1/syn/report/.

set kind  [expr {[llength $argv] > 0 ? [lindex $argv 0] : "layer"}]
set steps [expr {[llength $argv] > 1 ? [lindex $argv 1] : "all"}]
set clock_ns 5.0  ;# 200 MHz
if {[lsearch -exact {gemm lif layer net} $kind] < 0} { error "kind must be gemm, lif, layer or net, got $kind" }

set root    [file normalize [file join [file dirname [info script]] ..]]
set vectors [file normalize [file join $root build $kind.bin]]
if {![file exists $vectors]} { error "missing $vectors: run `make build/$kind.bin` in $root first" }
set defs [expr {[info exists ::env(QSNN_DEFS)] ? $::env(QSNN_DEFS) : ""}]
set cflags "-std=c++14 -I$root/include -I$root/src $defs"

open_project -reset qsnn_${kind}_prj
set_top qsnn_${kind}_top
add_files $root/src/${kind}_top.cpp -cflags $cflags
add_files -tb $root/tb/tb_${kind}.cpp -cflags "$cflags -I$root/tb"
open_solution -reset solution1 -flow_target vivado
set_part xck26-sfvc784-2LV-c
create_clock -period $clock_ns -name default

if {$steps eq "csim" || $steps eq "all"} { csim_design -argv $vectors }
if {$steps eq "csynth" || $steps eq "cosim" || $steps eq "all"} { csynth_design }
if {$steps eq "cosim" || $steps eq "all"} { cosim_design -argv $vectors }
exit
