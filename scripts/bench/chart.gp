# Chart for docs/performance.png, drawn from report.py's data files.
# Variables (gnuplot -e): tp, cost (data files with a header row: case nginx haproxy [wsingress]), out, n.
set terminal pngcairo size 1400,520 font "sans,11"
set output out
set datafile missing "NaN"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top right autotitle columnheader
set grid ytics
set yrange [0:*]
set xtics nomirror rotate by -20
set linetype 1 lc rgb "#3b7d3b"
set linetype 2 lc rgb "#2b5d9b"
set linetype 3 lc rgb "#d9822b"

set multiplot layout 1,2
set title "Throughput ÷ direct connection (higher is better)"
set ylabel "× direct"
plot for [i=2:n+1] tp using i:xtic(1)

set title "Proxy CPU per operation, memory per idle connection ÷ nginx (lower is better)"
set ylabel "× nginx"
plot for [i=2:n+1] cost using i:xtic(1)
unset multiplot
