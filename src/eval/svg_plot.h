// Plain SVG plots for the evaluation report (no dependencies; open in any browser): a small
// canvas with XML-escaped text, linear axes with ticks, and the four report figures.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace smt {

class SvgCanvas {
 public:
  SvgCanvas(double width, double height);
  void rect(double x, double y, double w, double h, const std::string& fill, const std::string& stroke = "none",
            const std::string& tooltip = "");
  void line(double x1, double y1, double x2, double y2, const std::string& stroke, double width = 1,
            const std::string& dash = "");
  void polyline(const std::vector<double>& xs, const std::vector<double>& ys, const std::string& stroke,
                double width = 2);
  void circle(double cx, double cy, double r, const std::string& fill);
  // anchor: start | middle | end; rotate in degrees around (x, y).
  void text(double x, double y, const std::string& s, double size = 12, const std::string& anchor = "start",
            double rotate = 0, const std::string& fill = "#222", bool bold = false);
  std::string str() const;

 private:
  double width_, height_;
  std::string body_;
};

std::string xml_escape(const std::string& s);

// A plot area in pixels and the data range it shows (y grows upwards in data space).
struct PlotArea {
  double left, top, width, height;
  double x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  double px(double x) const { return left + (x - x_min) / (x_max - x_min) * width; }
  double py(double y) const { return top + height - (y - y_min) / (y_max - y_min) * height; }
};
// Frame, ticks with labels (num_ticks intervals per axis), axis labels and a title.
void draw_axes(SvgCanvas& svg, const PlotArea& area, const std::string& x_label, const std::string& y_label,
               const std::string& title, int num_x_ticks = 5, int num_y_ticks = 5);

// The colour of series i (a fixed qualitative palette).
std::string series_color(size_t i);

struct RocSeries {
  std::string name;
  std::vector<double> fpr, tpr;
  double auc = -1;
};
// ROC curves in one panel with the chance diagonal and a legend "name (AUC x)".
std::string plot_roc(const std::vector<RocSeries>& series, const std::string& title);

struct ReliabilityPanel {
  std::string name;
  std::vector<int64_t> count;            // [bins]
  std::vector<double> confidence, accuracy;  // [bins] (empty bins ignored)
  double ece = 0;
};
// One panel per view: accuracy per confidence bin as bars, the mean confidence marked, diagonal.
std::string plot_reliability(const std::vector<ReliabilityPanel>& panels);

struct ConfusionPanel {
  std::string name;
  std::vector<std::string> class_names;
  std::vector<std::vector<int64_t>> confusion;  // rows = true label
};
// One heat map per view, counts in the cells, shaded by the row-normalised rate.
std::string plot_confusion(const std::vector<ConfusionPanel>& panels);

// Grouped bars: tokens per expert, one group per layer (layer_names [L], counts [L][E]).
std::string plot_expert_load(const std::vector<std::string>& layer_names,
                             const std::vector<std::vector<int64_t>>& tokens_per_expert, const std::string& title);

// Writes text to path (throws Error naming the path on failure).
void write_text_file(const std::string& path, const std::string& text);

}  // namespace smt
