// spanlens operator page: optional refresh, and sorting a table by a clicked header.
"use strict";
(function () {
  var box = document.getElementById("refresh");
  if (box) {
    box.checked = sessionStorage.getItem("spanlens-refresh") === "1";
    var timer = null;
    var arm = function () {
      if (timer) { clearTimeout(timer); timer = null; }
      if (box.checked) { timer = setTimeout(function () { location.reload(); }, 5000); }
    };
    box.addEventListener("change", function () {
      sessionStorage.setItem("spanlens-refresh", box.checked ? "1" : "0");
      arm();
    });
    arm();
  }
  var value = function (cell) {
    var text = cell.textContent.trim();
    var number = parseFloat(text);
    return isNaN(number) ? text : number;
  };
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var rows = table.tHead.rows;
    var last = rows[rows.length - 1];
    // Each header with its column: spanning headers in the first row, the columns of a
    // group from the last row's headers in order.
    var columns = [];
    var column = 0, sub = 0;
    Array.prototype.forEach.call(rows[0].cells, function (th) {
      if (th.rowSpan === rows.length) {
        columns.push([th, column]);
        column += th.colSpan;
        return;
      }
      for (var i = 0; i < th.colSpan; i++) { columns.push([last.cells[sub++], column++]); }
    });
    columns.forEach(function (pair) {
      var th = pair[0], index = pair[1];
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var descending = th.getAttribute("data-sorted") !== "desc";
        th.setAttribute("data-sorted", descending ? "desc" : "asc");
        var sorted = Array.prototype.slice.call(body.rows).sort(function (a, b) {
          var x = value(a.cells[index]), y = value(b.cells[index]);
          var order = x < y ? -1 : x > y ? 1 : 0;
          return descending ? -order : order;
        });
        sorted.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
})();
