// Keyboard answers for the pair page: ← left, → right, ↓ no preference, Backspace undo, Enter next.
(function () {
  var form = document.getElementById("vote-form");
  if (!form) return;
  var sets = Array.prototype.slice.call(form.querySelectorAll("fieldset.question"));
  var button = document.getElementById("next");
  function answered(set) { return set.querySelector("input:checked") !== null; }
  function active() {
    for (var i = 0; i < sets.length; i++) if (!answered(sets[i])) return sets[i];
    return null;
  }
  function mark() {
    var current = active();
    sets.forEach(function (set) { set.classList.toggle("active", set === current); });
  }
  function choose(value) {
    var set = active();
    if (!set) return;
    var input = set.querySelector('input[value="' + value + '"]');
    if (input) input.checked = true;
    mark();
  }
  form.addEventListener("change", mark);
  form.addEventListener("submit", function () { button.disabled = true; });
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "ArrowLeft") { choose("left"); event.preventDefault(); }
    else if (event.key === "ArrowRight") { choose("right"); event.preventDefault(); }
    else if (event.key === "ArrowDown") { choose("none"); event.preventDefault(); }
    else if (event.key === "Backspace") {
      for (var i = sets.length - 1; i >= 0; i--) {
        var checked = sets[i].querySelector("input:checked");
        if (checked) { checked.checked = false; break; }
      }
      mark(); event.preventDefault();
    } else if (event.key === "Enter") {
      event.preventDefault();
      if (active() === null && !button.disabled) { button.disabled = true; form.submit(); }
    }
  });
  mark();
  document.body.dataset.keys = "ready";  // the keyboard answers work from here on
})();
