// MathJax configuration for pymdownx.arithmatex (generic mode). The MathJax script itself is optional:
// without it (offline) formulas stay readable as TeX source.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
