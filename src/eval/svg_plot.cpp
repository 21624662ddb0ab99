// SVG canvas and the report figures (see svg_plot.h).
#include "eval/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "core/error.h"

namespace smt {

namespace {
std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}
std::string tick_label(double v) {
  char buf[32];
  if (std::abs(v) >= 1000 || (v == std::floor(v) && std::abs(v) >= 10)) std::snprintf(buf, sizeof buf, "%.0f", v);
  else std::snprintf(buf, sizeof buf, "%.2g", v);
  return buf;
}
}  // namespace

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') out += ' ';  // not allowed in XML 1.0
        else out += c;
    }
  }
  return out;
}

SvgCanvas::SvgCanvas(double width, double height) : width_(width), height_(height) {}

void SvgCanvas::rect(double x, double y, double w, double h, const std::string& fill, const std::string& stroke,
                     const std::string& tooltip) {
  body_ += "<rect x=\"" + num(x) + "\" y=\"" + num(y) + "\" width=\"" + num(std::max(0.0, w)) + "\" height=\"" +
           num(std::max(0.0, h)) + "\" fill=\"" + fill + "\" stroke=\"" + stroke + "\"";
  if (tooltip.empty()) body_ += "/>\n";
  else body_ += "><title>" + xml_escape(tooltip) + "</title></rect>\n";
}

void SvgCanvas::line(double x1, double y1, double x2, double y2, const std::string& stroke, double width,
                     const std::string& dash) {
  body_ += "<line x1=\"" + num(x1) + "\" y1=\"" + num(y1) + "\" x2=\"" + num(x2) + "\" y2=\"" + num(y2) +
           "\" stroke=\"" + stroke + "\" stroke-width=\"" + num(width) + "\"";
  if (!dash.empty()) body_ += " stroke-dasharray=\"" + dash + "\"";
  body_ += "/>\n";
}

void SvgCanvas::polyline(const std::vector<double>& xs, const std::vector<double>& ys, const std::string& stroke,
                         double width) {
  SMT_CHECK(xs.size() == ys.size(), "svg polyline: ", xs.size(), " x values but ", ys.size(), " y values");
  body_ += "<polyline fill=\"none\" stroke=\"" + stroke + "\" stroke-width=\"" + num(width) + "\" points=\"";
  for (size_t i = 0; i < xs.size(); ++i) body_ += (i ? " " : "") + num(xs[i]) + "," + num(ys[i]);
  body_ += "\"/>\n";
}

void SvgCanvas::circle(double cx, double cy, double r, const std::string& fill) {
  body_ += "<circle cx=\"" + num(cx) + "\" cy=\"" + num(cy) + "\" r=\"" + num(r) + "\" fill=\"" + fill + "\"/>\n";
}

void SvgCanvas::text(double x, double y, const std::string& s, double size, const std::string& anchor, double rotate,
                     const std::string& fill, bool bold) {
  body_ += "<text x=\"" + num(x) + "\" y=\"" + num(y) + "\" font-size=\"" + num(size) + "\" text-anchor=\"" + anchor +
           "\" fill=\"" + fill + "\"";
  if (bold) body_ += " font-weight=\"bold\"";
  if (rotate != 0) body_ += " transform=\"rotate(" + num(rotate) + " " + num(x) + " " + num(y) + ")\"";
  body_ += ">" + xml_escape(s) + "</text>\n";
}

std::string SvgCanvas::str() const {
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
         num(width_) + "\" height=\"" + num(height_) + "\" viewBox=\"0 0 " + num(width_) + " " + num(height_) +
         "\" font-family=\"Helvetica, Arial, sans-serif\">\n<rect x=\"0\" y=\"0\" width=\"" + num(width_) +
         "\" height=\"" + num(height_) + "\" fill=\"white\"/>\n" + body_ + "</svg>\n";
}

void draw_axes(SvgCanvas& svg, const PlotArea& a, const std::string& x_label, const std::string& y_label,
               const std::string& title, int num_x_ticks, int num_y_ticks) {
  svg.rect(a.left, a.top, a.width, a.height, "none", "#444");
  for (int i = 0; num_x_ticks > 0 && i <= num_x_ticks; ++i) {
    const double v = a.x_min + (a.x_max - a.x_min) * i / num_x_ticks;
    const double x = a.px(v);
    svg.line(x, a.top + a.height, x, a.top + a.height + 5, "#444");
    if (i > 0 && i < num_x_ticks) svg.line(x, a.top, x, a.top + a.height, "#eee");
    svg.text(x, a.top + a.height + 18, tick_label(v), 11, "middle");
  }
  for (int i = 0; i <= num_y_ticks; ++i) {
    const double v = a.y_min + (a.y_max - a.y_min) * i / num_y_ticks;
    const double y = a.py(v);
    svg.line(a.left - 5, y, a.left, y, "#444");
    if (i > 0 && i < num_y_ticks) svg.line(a.left, y, a.left + a.width, y, "#eee");
    svg.text(a.left - 8, y + 4, tick_label(v), 11, "end");
  }
  svg.text(a.left + a.width / 2, a.top + a.height + 38, x_label, 13, "middle");
  svg.text(a.left - 45, a.top + a.height / 2, y_label, 13, "middle", -90);
  svg.text(a.left + a.width / 2, a.top - 12, title, 14, "middle", 0, "#111", true);
}

std::string series_color(size_t i) {
  static const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
}

std::string plot_roc(const std::vector<RocSeries>& series, const std::string& title) {
  SvgCanvas svg(520, 500);
  const PlotArea a{80, 50, 400, 360};
  svg.line(a.px(0), a.py(0), a.px(1), a.py(1), "#999", 1, "5,4");
  for (size_t s = 0; s < series.size(); ++s) {
    std::vector<double> xs, ys;
    for (size_t i = 0; i < series[s].fpr.size(); ++i) {
      xs.push_back(a.px(series[s].fpr[i]));
      ys.push_back(a.py(series[s].tpr[i]));
    }
    svg.polyline(xs, ys, series_color(s), 2);
    char label[160];
    std::snprintf(label, sizeof label, "%s (AUC %.3f)", series[s].name.c_str(), series[s].auc);
    const double ly = a.top + a.height - 12 - 18.0 * static_cast<double>(series.size() - 1 - s);
    svg.line(a.px(0.45), ly - 4, a.px(0.52), ly - 4, series_color(s), 3);
    svg.text(a.px(0.54), ly, label, 12);
  }
  draw_axes(svg, a, "false positive rate", "true positive rate", title);
  return svg.str();
}

std::string plot_reliability(const std::vector<ReliabilityPanel>& panels) {
  const double panel_w = 420, panel_h = 400;
  SvgCanvas svg(panel_w * static_cast<double>(std::max<size_t>(1, panels.size())), panel_h);
  for (size_t p = 0; p < panels.size(); ++p) {
    const auto& rp = panels[p];
    const PlotArea a{p * panel_w + 70, 50, 320, 280};
    svg.line(a.px(0), a.py(0), a.px(1), a.py(1), "#999", 1, "5,4");
    const size_t B = rp.count.size();
    int64_t total = 0;
    for (int64_t c : rp.count) total += c;
    for (size_t b = 0; b < B; ++b) {
      if (rp.count[b] == 0) continue;
      const double x0 = static_cast<double>(b) / static_cast<double>(B), x1 = static_cast<double>(b + 1) / static_cast<double>(B);
      char tip[160];
      std::snprintf(tip, sizeof tip, "bin %zu: n=%lld, accuracy %.3f, mean confidence %.3f", b,
                    static_cast<long long>(rp.count[b]), rp.accuracy[b], rp.confidence[b]);
      svg.rect(a.px(x0) + 1, a.py(rp.accuracy[b]), a.px(x1) - a.px(x0) - 2, a.py(0) - a.py(rp.accuracy[b]),
               series_color(0), "#114", tip);
      svg.circle(a.px(rp.confidence[b]), a.py(rp.confidence[b]), 3, "#d62728");
      const double share = total > 0 ? static_cast<double>(rp.count[b]) / static_cast<double>(total) : 0;
      char pct[16];
      std::snprintf(pct, sizeof pct, "%.0f%%", 100 * share);
      svg.text((a.px(x0) + a.px(x1)) / 2, a.py(rp.accuracy[b]) - 4, pct, 9, "middle", 0, "#555");
    }
    char title[160];
    std::snprintf(title, sizeof title, "%s: reliability (ECE %.3f)", rp.name.c_str(), rp.ece);
    draw_axes(svg, a, "top-class confidence", "accuracy", title);
    svg.text(a.left - 40, a.top + a.height + 56, "bars: accuracy per bin, labelled with its share of examples", 10,
             "start", 0, "#555");
    svg.text(a.left - 40, a.top + a.height + 69, "red dots: mean confidence; dashed: perfect calibration", 10, "start",
             0, "#555");
  }
  return svg.str();
}

std::string plot_confusion(const std::vector<ConfusionPanel>& panels) {
  double total_w = 0;
  std::vector<double> widths;
  for (const auto& p : panels) {
    const double cell = p.class_names.size() > 3 ? 56 : 80;
    widths.push_back(160 + cell * static_cast<double>(p.class_names.size()) + 40);
    total_w += widths.back();
  }
  double max_h = 0;
  for (const auto& p : panels) {
    const double cell = p.class_names.size() > 3 ? 56 : 80;
    max_h = std::max(max_h, 150 + cell * static_cast<double>(p.class_names.size()));
  }
  SvgCanvas svg(std::max(200.0, total_w), std::max(200.0, max_h));
  double x_off = 0;
  for (size_t p = 0; p < panels.size(); ++p) {
    const auto& cp = panels[p];
    const size_t C = cp.class_names.size();
    SMT_CHECK(cp.confusion.size() == C, "confusion plot: ", cp.confusion.size(), " rows for ", C, " classes");
    const double cell = C > 3 ? 56 : 80;
    const double left = x_off + 140, top = 70;
    for (size_t i = 0; i < C; ++i) {
      int64_t row_total = 0;
      for (int64_t v : cp.confusion[i]) row_total += v;
      for (size_t j = 0; j < C; ++j) {
        const int64_t v = cp.confusion[i][j];
        const double rate = row_total > 0 ? static_cast<double>(v) / static_cast<double>(row_total) : 0;
        const int shade = static_cast<int>(std::lround(255 - 200 * rate));
        char fill[16];
        std::snprintf(fill, sizeof fill, "rgb(%d,%d,255)", shade, shade);
        char tip[200];
        std::snprintf(tip, sizeof tip, "true %s, predicted %s: %lld (%.1f%% of the row)", cp.class_names[i].c_str(),
                      cp.class_names[j].c_str(), static_cast<long long>(v), 100 * rate);
        svg.rect(left + j * cell, top + i * cell, cell, cell, fill, "#fff", tip);
        svg.text(left + (j + 0.5) * cell, top + (i + 0.5) * cell + 5, std::to_string(v), 13, "middle", 0,
                 rate > 0.55 ? "#fff" : "#111");
      }
      svg.text(left - 6, top + (i + 0.5) * cell + 4, cp.class_names[i], 11, "end");
      svg.text(left + (i + 0.5) * cell, top - 6, cp.class_names[i], 11, "start", -35);
    }
    svg.text(left + cell * C / 2, top + cell * C + 22, "predicted label (columns)", 12, "middle");
    svg.text(x_off + 14, top + cell * C / 2, "true label (rows)", 12, "middle", -90);
    svg.text(left + cell * C / 2, top + cell * C + 44, cp.name + ": confusion matrix", 14, "middle", 0, "#111", true);
    x_off += widths[p];
  }
  return svg.str();
}

std::string plot_expert_load(const std::vector<std::string>& layer_names,
                             const std::vector<std::vector<int64_t>>& tokens_per_expert, const std::string& title) {
  SMT_CHECK(layer_names.size() == tokens_per_expert.size(), "expert load plot: ", layer_names.size(), " names for ",
            tokens_per_expert.size(), " layers");
  size_t E = 1;
  int64_t max_count = 1;
  for (const auto& l : tokens_per_expert) {
    E = std::max(E, l.size());
    for (int64_t c : l) max_count = std::max(max_count, c);
  }
  const size_t L = std::max<size_t>(1, layer_names.size());
  const double group_w = std::max(120.0, 22.0 * static_cast<double>(E) + 30);
  SvgCanvas svg(140 + group_w * static_cast<double>(L) + 40, 440);
  PlotArea a{90, 50, group_w * static_cast<double>(L), 300};
  // y range: the next "nice" number (1, 2, 2.5, 5 x 10^k) above the largest count
  double nice = 1;
  while (nice * 10 <= static_cast<double>(max_count)) nice *= 10;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * nice >= static_cast<double>(max_count)) {
      nice *= m;
      break;
    }
  a.y_max = nice;
  draw_axes(svg, a, "", "tokens (non-PAD assignments)", title, 0, 5);
  for (size_t l = 0; l < layer_names.size(); ++l) {
    const auto& counts = tokens_per_expert[l];
    const double bar_w = (group_w - 30) / static_cast<double>(std::max<size_t>(1, counts.size()));
    const double gx = a.left + group_w * static_cast<double>(l) + 15;
    int64_t sum = 0;
    for (int64_t c : counts) sum += c;
    const double mean = counts.empty() ? 0 : static_cast<double>(sum) / static_cast<double>(counts.size());
    for (size_t e = 0; e < counts.size(); ++e) {
      char tip[120];
      std::snprintf(tip, sizeof tip, "%s, expert %zu: %lld tokens", layer_names[l].c_str(), e,
                    static_cast<long long>(counts[e]));
      const double y = a.py(static_cast<double>(counts[e]));
      svg.rect(gx + bar_w * static_cast<double>(e), y, bar_w - 2, a.py(0) - y, series_color(e), "none", tip);
      if (counts.size() <= 16)
        svg.text(gx + bar_w * (static_cast<double>(e) + 0.5), a.py(0) + 14, std::to_string(e), 10, "middle");
    }
    svg.line(gx, a.py(mean), gx + group_w - 30, a.py(mean), "#111", 1, "4,3");
    svg.text(gx + (group_w - 30) / 2, a.py(0) + 32, layer_names[l], 12, "middle", 0, "#111", true);
  }
  svg.text(a.left, a.py(0) + 55, "bars: experts (numbered); dashed line: the mean per expert (perfect balance)", 10,
           "start", 0, "#555");
  return svg.str();
}

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  SMT_CHECK(f.good(), "cannot write ", path);
  f << text;
  f.flush();
  SMT_CHECK(f.good(), "error while writing ", path);
}

}  // namespace smt
