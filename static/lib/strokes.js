// Example pen paths for the ten digits: the same control points as testkit/drawing.py,
// so "the example 7" on the page is the drawing the tests and benchmarks use.
// Unit square, y down; each digit is a list of strokes, each stroke a list of [x, y].

export const EXAMPLES = {
  0: [[[0.5, 0.1], [0.3, 0.2], [0.23, 0.5], [0.3, 0.8], [0.5, 0.9], [0.7, 0.8], [0.77, 0.5], [0.7, 0.2], [0.5, 0.1], [0.42, 0.14]]],
  1: [[[0.36, 0.24], [0.53, 0.1], [0.52, 0.9]]],
  2: [[[0.26, 0.3], [0.35, 0.15], [0.52, 0.1], [0.7, 0.2], [0.7, 0.4], [0.5, 0.62], [0.25, 0.88], [0.5, 0.87], [0.78, 0.88]]],
  3: [[[0.26, 0.2], [0.5, 0.1], [0.72, 0.22], [0.68, 0.4], [0.45, 0.49], [0.7, 0.58], [0.74, 0.78], [0.5, 0.91], [0.25, 0.82]]],
  4: [[[0.3, 0.1], [0.26, 0.56], [0.76, 0.56]], [[0.66, 0.12], [0.66, 0.9]]],
  5: [[[0.74, 0.12], [0.34, 0.12], [0.3, 0.45]], [[0.3, 0.45], [0.5, 0.4], [0.72, 0.52], [0.73, 0.76], [0.52, 0.9], [0.26, 0.83]]],
  6: [[[0.68, 0.1], [0.45, 0.28], [0.31, 0.58], [0.35, 0.83], [0.55, 0.91], [0.71, 0.77], [0.66, 0.58], [0.47, 0.54], [0.32, 0.65]]],
  7: [[[0.22, 0.12], [0.79, 0.12], [0.44, 0.9]]],
  8: [[[0.5, 0.5], [0.31, 0.36], [0.33, 0.17], [0.5, 0.1], [0.67, 0.17], [0.69, 0.36], [0.5, 0.5], [0.29, 0.68],
       [0.31, 0.86], [0.5, 0.92], [0.69, 0.86], [0.71, 0.68], [0.5, 0.5]]],
  9: [[[0.7, 0.3], [0.56, 0.12], [0.36, 0.14], [0.29, 0.32], [0.44, 0.46], [0.69, 0.36], [0.71, 0.3], [0.69, 0.6], [0.67, 0.9]]],
};

const MARGIN = 0.12; // as digit_paths(): the drawing keeps 12% of the canvas free on each side

function catmullRom(points, perSegment = 8) {
  if (points.length < 3) return points.slice();
  const pts = [points[0], ...points, points[points.length - 1]];
  const out = [];
  for (let i = 1; i < pts.length - 2; i++) {
    const [p0, p1, p2, p3] = [pts[i - 1], pts[i], pts[i + 1], pts[i + 2]];
    for (let k = 0; k < perSegment; k++) {
      const t = k / perSegment, t2 = t * t, t3 = t2 * t;
      out.push([0, 1].map((j) => 0.5 * ((2 * p1[j]) + (-p0[j] + p2[j]) * t
        + (2 * p0[j] - 5 * p1[j] + 4 * p2[j] - p3[j]) * t2 + (-p0[j] + 3 * p1[j] - 3 * p2[j] + p3[j]) * t3)));
    }
  }
  out.push(points[points.length - 1]);
  return out;
}

/** The example `digit` as smoothed strokes in canvas-unit coordinates ([0, 1], margins applied). */
export function exampleStrokes(digit) {
  const span = 1 - 2 * MARGIN;
  return EXAMPLES[digit].map((stroke) => catmullRom(stroke).map(([x, y]) => [MARGIN + x * span, MARGIN + y * span]));
}
